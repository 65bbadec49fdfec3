//! Defence in depth against resources Envoy rejects that validation did not catch (issue 9): a
//! snapshot wrapper corrupts one translated cluster (`connect_timeout: 0s`, which Envoy's proto
//! validation rejects, failing the whole CDS response) and a real Envoy must end up with every
//! other resource, the rejected cluster kept out, the metric and the rejection sink naming it —
//! also while the configuration keeps changing, where every NACK Envoy sends (its own
//! `update_rejected` counter) must be counted by the server.
//!
//! Same loopback layout as envoy_xds.rs: Services on 127.0.10.x with Envoy's outbound port as
//! their port, pods on 127.0.20.x.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::ads::TestServer;
use common::envoy::{envoy_binary, free_port, http_get, Ads, Backend, Envoy};
use common::mesh::translated;
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::google::protobuf::{Duration as PbDuration, UInt32Value};
use prost::Message;
use traffic_translate::snapshot::{MeshSnapshot, NodeResources, CLUSTER};

/// Services `web`, `api`, `db`: http, http, tcp. `web`'s connect timeout is `1000 + gen` ms, so
/// every generation changes its cluster.
fn model_yaml(port: u16, target: u16, gen: u32) -> String {
    let mut y = String::from("services:\n");
    for (i, (name, proto)) in [("web", "http"), ("api", "http"), ("db", "tcp")]
        .iter()
        .enumerate()
    {
        let extra = if *name == "web" {
            format!(", traffic.connection.timeout: \"{}\"", 1000 + gen)
        } else {
            String::new()
        };
        y.push_str(&format!(
            "- name: {name}\n  clusterIPs: [127.0.10.{n}]\n  ports: [{{name: p, port: {port}, targetPort: {target}}}]\n  selector: {{app: {name}}}\n  labels: {{traffic.port.{port}: {proto}{extra}}}\n",
            n = i + 1
        ));
    }
    y.push_str("pods:\n");
    for (i, name) in ["web", "api", "db"].iter().enumerate() {
        y.push_str(&format!(
            "- {{name: {name}-0, ip: 127.0.20.{}, labels: {{app: {name}}}}}\n",
            i + 1
        ));
    }
    y
}

/// A translation with one cluster corrupted the way translation must never emit it: a zero
/// connect timeout (Envoy: "value must be greater than 0s"). `gen` varies another field so each
/// generation is a new input (retried, and rejected again).
#[derive(Debug)]
struct Corrupt {
    inner: Arc<dyn MeshSnapshot>,
    cluster: String,
    gen: u32,
}

impl MeshSnapshot for Corrupt {
    fn for_node(&self, node_id: &str) -> NodeResources {
        let mut nr = self.inner.for_node(node_id);
        if let Some(r) = nr.make_mut(CLUSTER).get_mut(&self.cluster) {
            let mut c = Cluster::decode(r.body.value.as_slice()).expect("cluster");
            c.connect_timeout = Some(PbDuration { seconds: 0, nanos: 0 });
            c.per_connection_buffer_limit_bytes = Some(UInt32Value {
                value: 32768 + self.gen,
            });
            *r = common::resources::resource(&self.cluster, &c, r.origin.clone());
        }
        nr
    }

    fn view_key(&self, node_id: &str) -> String {
        self.inner.view_key(node_id)
    }
}

struct Fixture {
    port: u16,
    target: u16,
    server: TestServer,
    envoy: Envoy,
    _backends: Vec<Backend>,
}

/// Generation `gen` of the model with db's cluster corrupt.
fn corrupt_snapshot(port: u16, target: u16, gen: u32) -> Arc<dyn MeshSnapshot> {
    Arc::new(Corrupt {
        inner: translated(&model_yaml(port, target, gen), port),
        cluster: format!("{port}|default|db"),
        gen,
    })
}

impl Fixture {
    fn snapshot(&self, gen: u32) -> Arc<dyn MeshSnapshot> {
        corrupt_snapshot(self.port, self.target, gen)
    }

    fn cluster(&self, svc: &str) -> String {
        format!("{}|default|{svc}", self.port)
    }

    /// Starts the server with generation 0 (db already corrupt) and a fresh Envoy: the worst
    /// case, where a rejected SotW CDS response leaves the proxy with no cluster at all.
    /// Returns the time from starting Envoy to every other cluster being active.
    async fn start(ads: Ads) -> Option<(Fixture, Duration)> {
        let bin = envoy_binary()?;
        let port = free_port();
        let web = Backend::start("web-0", "127.0.20.1".parse().expect("ip"), 0).await;
        let target = web.addr.port();
        let api = Backend::start("api-0", "127.0.20.2".parse().expect("ip"), target).await;
        let server = TestServer::start_with(corrupt_snapshot(port, target, 0)).await;
        let started = Instant::now();
        let envoy = Envoy::start(&bin, "client.default", server.addr, ads).await;
        let f = Fixture {
            port,
            target,
            server,
            envoy,
            _backends: vec![web, api],
        };
        f.wait_clusters(&["web", "api"]).await;
        Some((f, started.elapsed()))
    }

    /// Waits until Envoy's active clusters include these Services' clusters, returning /clusters.
    async fn wait_clusters(&self, services: &[&str]) -> String {
        let wanted: Vec<String> = services
            .iter()
            .map(|s| format!("{}::", self.cluster(s)))
            .collect();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let clusters = self.envoy.admin_get("/clusters").await;
            if wanted.iter().all(|w| clusters.contains(w.as_str())) {
                return clusters;
            }
            assert!(
                Instant::now() < deadline,
                "clusters {wanted:?} never arrived:\n{clusters}\nserver metrics:\n{}\nlog:\n{}",
                self.server.metrics(),
                self.envoy.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn mode(ads: Ads) -> &'static str {
        if ads == Ads::Sotw {
            "sotw"
        } else {
            "delta"
        }
    }

    /// Waits until the server has counted as many cluster NACKs as Envoy reports rejected CDS
    /// updates, and both stay put for a moment. Returns (Envoy's count, the server's).
    async fn settled_nacks(&self, ads: Ads) -> (u64, u64) {
        let sample = format!("xds_nacks_total{{mode=\"{}\",type=\"cluster\"}}", Self::mode(ads));
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut stable_since: Option<(Instant, u64, u64)> = None;
        loop {
            let envoy = self.envoy.stat("cluster_manager.cds.update_rejected").await;
            let server = self.server.metric(&sample) as u64;
            match stable_since {
                Some((at, e, s)) if e == envoy && s == server && envoy == server => {
                    if at.elapsed() > Duration::from_millis(1500) {
                        return (envoy, server);
                    }
                }
                _ => stable_since = Some((Instant::now(), envoy, server)),
            }
            if Instant::now() > deadline {
                return (envoy, server);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn only_the_rejected_cluster_is_kept_out(ads: Ads) {
    let Some((f, converged)) = Fixture::start(ads).await else {
        return;
    };
    let mode = Fixture::mode(ads);
    eprintln!(
        "{mode}: fresh Envoy with one corrupt cluster: every other cluster active {converged:?} after start"
    );
    let clusters = f.wait_clusters(&["web", "api"]).await;
    let db = f.cluster("db");
    assert!(
        !clusters.contains(&format!("{db}::")),
        "the rejected cluster is active:\n{clusters}"
    );
    // Listeners arrived too, and real traffic flows through the listener's web chain.
    let dump = f
        .envoy
        .wait_config("the outbound listener", |d| d.contains("\"outbound\""))
        .await;
    assert!(dump.contains("127.0.10.1"), "web's filter chain");
    let web = SocketAddr::new("127.0.10.1".parse::<IpAddr>().expect("ip"), f.port);
    let mut ok = false;
    for _ in 0..50 {
        if http_get(web, "/", &[]).await.is_ok_and(|r| r.status == 200) {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "no HTTP through web; log:\n{}", f.envoy.log_text());
    // Every NACK counted; the culprit found, named by the metric and the sink, nothing else.
    let (envoy_nacks, server_nacks) = f.settled_nacks(ads).await;
    assert_eq!(envoy_nacks, server_nacks, "{}", f.server.metrics());
    assert!(envoy_nacks >= 1);
    eprintln!("{mode}: NACKs Envoy {envoy_nacks}, server {server_nacks}");
    let labels = format!("{{mode=\"{mode}\",type=\"cluster\"}}");
    assert_eq!(
        f.server.metric(&format!("xds_rejected_resources_total{labels}")),
        1.0
    );
    assert_eq!(
        f.server.metric(&format!("xds_quarantined_resources{labels}")),
        1.0
    );
    let rejected = f.server.rejections.0.lock().expect("lock").clone();
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert_eq!(rejected[0].resources, std::slice::from_ref(&db));
    assert_eq!(rejected[0].type_url, CLUSTER);
    assert_eq!(
        rejected[0].origins,
        vec![common::resources::service_ref("db").expect("ref")]
    );
    assert!(
        rejected[0].message.contains("greater than"),
        "{}",
        rejected[0].message
    );
    assert_eq!(f.envoy.stat("listener_manager.lds.update_rejected").await, 0);

    // A live proxy: a change that brings a new good cluster along with a new bad version of db.
    // Time from publishing to the good cluster being active.
    let before = f.server.metric(&format!("xds_rejected_resources_total{labels}"));
    let published = Instant::now();
    f.server.publish_snapshot(f.snapshot(1));
    let deadline = Instant::now() + Duration::from_secs(15);
    let want = "connect_timeout\": \"1.001s\"";
    loop {
        let dump = f
            .envoy
            .admin_get("/config_dump?resource=dynamic_active_clusters")
            .await;
        if dump.contains(want) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "web's new version never arrived:\n{dump}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eprintln!(
        "{mode}: live Envoy, change carrying a new bad version: good change active after {:?}",
        published.elapsed()
    );
    let (envoy_nacks, server_nacks) = f.settled_nacks(ads).await;
    assert_eq!(envoy_nacks, server_nacks);
    assert_eq!(
        f.server.metric(&format!("xds_rejected_resources_total{labels}")),
        before + 1.0
    );
    assert_eq!(
        f.server.metric(&format!("xds_quarantined_resources{labels}")),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_sotw_only_the_cluster_envoy_rejects_is_kept_out_and_it_is_named() {
    only_the_rejected_cluster_is_kept_out(Ads::Sotw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_delta_only_the_cluster_envoy_rejects_is_kept_out_and_it_is_named() {
    only_the_rejected_cluster_is_kept_out(Ads::Delta).await;
}

/// 30 changes 100-300 ms apart and a burst of 20 3 ms apart, each bringing a new version of web's
/// cluster and a new bad version of db's: every NACK Envoy sends is counted, stale or not, and
/// at the end Envoy has the last web version and no bad db.
async fn every_nack_is_counted_while_config_churns(ads: Ads) {
    let Some((f, _)) = Fixture::start(ads).await else {
        return;
    };
    let mode = Fixture::mode(ads);
    let started = Instant::now();
    const CHANGES: u32 = 30;
    const BURST: u32 = 20;
    for gen in 1..=CHANGES {
        f.server.publish_snapshot(f.snapshot(gen));
        // A fixed pseudo-random spread over 100..300 ms.
        tokio::time::sleep(Duration::from_millis(100 + u64::from(gen * 67 % 201))).await;
    }
    // Then a burst 3 ms apart: responses overtake Envoy's answers, which then name older nonces.
    for gen in CHANGES + 1..=CHANGES + BURST {
        f.server.publish_snapshot(f.snapshot(gen));
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    const LAST: u32 = CHANGES + BURST;
    let want = format!("connect_timeout\": \"1.{LAST:03}s\"");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let dump = f
            .envoy
            .admin_get("/config_dump?resource=dynamic_active_clusters")
            .await;
        if dump.contains(&want) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the last web version never arrived ({want}):\n{dump}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (envoy_nacks, server_nacks) = f.settled_nacks(ads).await;
    let labels = format!("{{mode=\"{mode}\",type=\"cluster\"}}");
    let stale = f.server.metric(&format!("xds_stale_nacks_total{labels}"));
    let rejected = f.server.metric(&format!("xds_rejected_resources_total{labels}"));
    eprintln!(
        "{mode}: {CHANGES} changes 100-300 ms apart and {BURST} 3 ms apart, in {:?}: NACKs Envoy {envoy_nacks}, server {server_nacks} ({stale} stale), resources quarantined {rejected}",
        started.elapsed()
    );
    assert_eq!(envoy_nacks, server_nacks, "{}", f.server.metrics());
    assert!(
        envoy_nacks >= u64::from(CHANGES),
        "each spaced change's bad db was tried"
    );
    assert_eq!(f.envoy.stat("listener_manager.lds.update_rejected").await, 0);
    // Acted on: every spaced change's bad version was quarantined (in the burst some versions
    // were superseded before being tried), only db ever was, and one is still out.
    assert!(rejected >= f64::from(CHANGES) + 1.0, "{rejected}");
    assert_eq!(
        f.server.metric(&format!("xds_quarantined_resources{labels}")),
        1.0
    );
    let db = f.cluster("db");
    let sink = f.server.rejections.0.lock().expect("lock").clone();
    assert!(
        sink.iter().all(|r| r.resources == std::slice::from_ref(&db)),
        "{sink:?}"
    );
    let clusters = f.wait_clusters(&["web", "api"]).await;
    assert!(!clusters.contains(&format!("{db}::")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_sotw_every_nack_is_counted_and_acted_on_while_config_changes_quickly() {
    every_nack_is_counted_while_config_churns(Ads::Sotw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_delta_every_nack_is_counted_and_acted_on_while_config_changes_quickly() {
    every_nack_is_counted_while_config_churns(Ads::Delta).await;
}
