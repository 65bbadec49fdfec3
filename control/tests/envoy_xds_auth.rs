//! A real Envoy with the bootstrap the agent generates (token from a file-based SDS secret,
//! injected on the ADS stream by the credential injector) against the authenticating control
//! plane (a fake token reviewer in place of TokenReview). Proves the renewal mechanism: the token
//! file is replaced, the control plane restarts and refuses the old token, and the same Envoy
//! process reconnects with the new token and keeps receiving configuration, without a restart.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::ads::TestServer;
use common::envoy::{envoy_binary, free_port, Envoy, TempDir};
use common::resources::{cluster, node};
use traffic_sidecar::bootstrap::{bootstrap, token_sds, BootstrapOptions, XdsAuth, XdsTls, TOKEN_SECRET};
use traffic_sidecar::PodRef;
use traffic_translate::snapshot::{MeshSnapshot, NodeResources};
use traffic_xds_auth::review::{POD_NAME_EXTRA, POD_UID_EXTRA};
use traffic_xds_auth::{Authenticator, FakeReviewer, Identity, PodFacts, Policy, ReviewError, StaticPods};

/// Every node gets a cluster named after itself (and `generation`).
#[derive(Debug)]
struct PerNode(i64);

impl MeshSnapshot for PerNode {
    fn for_node(&self, node_id: &str) -> NodeResources {
        node([cluster(&format!("c-{node_id}-{}", self.0), 1)])
    }
}

fn identity(pod: &str) -> Identity {
    let extra = BTreeMap::from([
        (POD_NAME_EXTRA.to_string(), vec![pod.to_string()]),
        (POD_UID_EXTRA.to_string(), vec![format!("uid-{pod}")]),
    ]);
    Identity::from_user("system:serviceaccount:default:web", &extra, None).expect("identity")
}

/// The control plane on its own runtime, so that a "restart" really ends every stream.
struct ControlPlane {
    rt: Option<tokio::runtime::Runtime>,
    server: TestServer,
}

impl ControlPlane {
    async fn start(addr: SocketAddr, reviewer: &FakeReviewer, generation: i64) -> Self {
        Self::start_tls(addr, reviewer, generation, None).await
    }

    async fn start_tls(
        addr: SocketAddr,
        reviewer: &FakeReviewer,
        generation: i64,
        identity: Option<(String, String)>,
    ) -> Self {
        let pods = StaticPods(HashMap::from([
            (
                ("default".into(), "a".into()),
                PodFacts {
                    uid: "uid-a".into(),
                    ip: Some("127.0.0.1".parse().expect("ip")),
                },
            ),
            (
                ("default".into(), "b".into()),
                PodFacts {
                    uid: "uid-b".into(),
                    ip: Some("127.0.0.1".parse().expect("ip")),
                },
            ),
        ]));
        let auth = Authenticator::new(
            Arc::new(reviewer.clone()),
            Arc::new(pods),
            Policy {
                gateway_service_accounts: vec![],
                check_peer: true,
            },
        );
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let server = rt
            .spawn(async move {
                TestServer::start_full(
                    &addr.to_string(),
                    Arc::new(PerNode(generation)),
                    Some(Arc::new(auth)),
                    identity,
                )
                .await
            })
            .await
            .expect("server task");
        ControlPlane { rt: Some(rt), server }
    }

    /// Kills the server and every stream (a crash, not a graceful stop).
    fn kill(mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

fn write_token(path: &Path, token: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, token_sds(token)).expect("write token");
    std::fs::rename(&tmp, path).expect("rename token");
}

/// How many times Envoy has read the token file.
async fn token_reads(envoy: &Envoy) -> u64 {
    envoy.stat(&format!("sds.{TOKEN_SECRET}.update_success")).await
}

/// Waits until Envoy has read the token file again after `before` reads.
async fn wait_token_reloaded(envoy: &Envoy, before: u64) {
    envoy
        .wait_stat(&format!("sds.{TOKEN_SECRET}.update_success"), |v| v > before)
        .await;
}

async fn sidecar(bin: &Path, pod: &str, token_file: &Path, xds: SocketAddr) -> Envoy {
    sidecar_tls(bin, pod, token_file, xds, None).await
}

async fn sidecar_tls(
    bin: &Path,
    pod: &str,
    token_file: &Path,
    xds: SocketAddr,
    tls: Option<XdsTls>,
) -> Envoy {
    let pod = PodRef {
        uid: format!("uid-{pod}"),
        namespace: "default".into(),
        name: pod.into(),
    };
    let token_sds_path = token_file.display().to_string();
    Envoy::start_with(bin, |admin_port| {
        let mut o = BootstrapOptions::new(xds.to_string());
        o.admin_port = admin_port;
        o.initial_fetch_timeout = Some(Duration::from_secs(1));
        o.auth = Some(XdsAuth {
            token_sds_path: token_sds_path.clone(),
        });
        o.tls = tls.clone();
        bootstrap(&pod, &o).expect("bootstrap").to_string()
    })
    .await
}

#[tokio::test]
async fn a_sidecar_keeps_working_across_a_token_renewal_and_a_control_plane_restart() {
    let Some(bin) = envoy_binary() else { return };
    let dir = TempDir::new("xds-auth");
    let token_file = dir.0.join("xds-token.yaml");
    let reviewer = FakeReviewer::default();
    reviewer.accept("tok-1", identity("a"));
    write_token(&token_file, "tok-1");
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let cp = ControlPlane::start(addr, &reviewer, 1).await;
    let envoy = sidecar(&bin, "a", &token_file, addr).await;
    envoy
        .wait_config("the first configuration", |d| d.contains("c-a.default-1"))
        .await;
    assert_eq!(cp.server.metric("xds_auth_admissions_total"), 1.0);
    let pid_before = envoy.admin_get("/server_info").await;

    // The agent renews: a new token in the file; the old one stops being valid.
    reviewer.accept("tok-2", identity("a"));
    let reads = token_reads(&envoy).await;
    write_token(&token_file, "tok-2");
    reviewer.reject("tok-1", ReviewError::Rejected("token has expired".into()));
    // Envoy reads the file asynchronously (a watch on its directory): wait until it took it.
    wait_token_reloaded(&envoy, reads).await;

    // The control plane restarts: Envoy's next stream must carry the new token.
    cp.kill();
    let cp = ControlPlane::start(addr, &reviewer, 2).await;
    envoy
        .wait_config("the restarted control plane's configuration", |d| {
            d.contains("c-a.default-2") && !d.contains("c-a.default-1")
        })
        .await;
    assert_eq!(cp.server.metric("xds_auth_admissions_total"), 1.0);
    assert_eq!(
        cp.server
            .metric("xds_auth_refusals_total{reason=\"invalid_token\"}"),
        0.0,
        "Envoy presented the renewed token, not the expired one"
    );
    // Same process (no restart): uptime kept growing.
    let uptime = |info: &str| -> u64 {
        let v: serde_json::Value = serde_json::from_str(info).expect("server_info");
        v["uptime_all_epochs"]
            .as_str()
            .and_then(|s| s.trim_end_matches('s').parse().ok())
            .unwrap_or(0)
    };
    let after = envoy.admin_get("/server_info").await;
    assert!(uptime(&after) >= uptime(&pid_before), "{pid_before}\n{after}");
    assert_eq!(envoy.stat("server.hot_restart_epoch").await, 0);
}

#[tokio::test]
async fn a_sidecar_with_another_pods_token_gets_nothing() {
    let Some(bin) = envoy_binary() else { return };
    let dir = TempDir::new("xds-auth");
    let token_file = dir.0.join("xds-token.yaml");
    let reviewer = FakeReviewer::default();
    reviewer.accept("tok-b", identity("b"));
    write_token(&token_file, "tok-b");
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let cp = ControlPlane::start(addr, &reviewer, 1).await;
    let envoy = sidecar(&bin, "a", &token_file, addr).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let dump = envoy.admin_get("/config_dump").await;
    assert!(!dump.contains("c-a.default"), "{dump}");
    cp.server
        .wait_metric("xds_auth_refusals_total{reason=\"node_mismatch\"}", |v| v >= 1.0)
        .await;
    assert_eq!(cp.server.metric("xds_auth_admissions_total"), 0.0);
}

#[tokio::test]
async fn over_tls_a_sidecar_verifies_the_control_plane_with_the_published_ca() {
    let Some(bin) = envoy_binary() else { return };
    let dir = TempDir::new("xds-auth");
    let token_file = dir.0.join("xds-token.yaml");
    let reviewer = FakeReviewer::default();
    reviewer.accept("tok-1", identity("a"));
    write_token(&token_file, "tok-1");
    let ca = traffic_control::xds_tls::Ca::generate().expect("ca");
    let name = "traffic-control.traffic-system.svc".to_string();
    let cert = ca.issue_server(std::slice::from_ref(&name)).expect("cert");
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let cp = ControlPlane::start_tls(addr, &reviewer, 1, Some((cert.cert_pem, cert.key_pem))).await;
    let tls = |ca_pem: String| XdsTls {
        ca_pem,
        server_name: name.clone(),
    };
    let envoy = sidecar_tls(&bin, "a", &token_file, addr, Some(tls(ca.cert_pem.clone()))).await;
    envoy
        .wait_config("configuration over TLS", |d| d.contains("c-a.default-1"))
        .await;
    assert_eq!(cp.server.metric("xds_auth_admissions_total"), 1.0);

    // A client trusting another CA does not talk to this control plane at all.
    let other = traffic_control::xds_tls::Ca::generate().expect("other ca");
    let stranger = sidecar_tls(&bin, "a", &token_file, addr, Some(tls(other.cert_pem))).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!stranger.admin_get("/config_dump").await.contains("c-a.default-1"));
    assert_eq!(cp.server.metric("xds_auth_admissions_total"), 1.0);
    // Nor does a plaintext client.
    let plain = sidecar(&bin, "a", &token_file, addr).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!plain.admin_get("/config_dump").await.contains("c-a.default-1"));
    assert_eq!(cp.server.metric("xds_auth_admissions_total"), 1.0);
}

/// An admitted stream is not trusted past its token's expiry: the control plane ends it with
/// `UNAUTHENTICATED` then, and Envoy, which keeps its configuration while it reconnects, opens the
/// next stream with the renewed token it reads from the file (the agent renews at 80 % of the
/// lifetime, long before).
#[tokio::test]
async fn a_stream_ends_when_its_token_expires_and_envoy_reconnects_with_the_renewed_one() {
    let Some(bin) = envoy_binary() else { return };
    let dir = TempDir::new("xds-auth");
    let token_file = dir.0.join("xds-token.yaml");
    let reviewer = FakeReviewer::default();
    // Long enough for a loaded machine to start Envoy and have it read the renewal below.
    let short = Identity {
        expires_at: Some(std::time::SystemTime::now() + Duration::from_secs(10)),
        ..identity("a")
    };
    reviewer.accept("tok-short", short);
    write_token(&token_file, "tok-short");
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let cp = ControlPlane::start(addr, &reviewer, 1).await;
    let envoy = sidecar(&bin, "a", &token_file, addr).await;
    envoy
        .wait_config("the first configuration", |d| d.contains("c-a.default-1"))
        .await;
    assert_eq!(cp.server.metric("xds_auth_admissions_total"), 1.0);
    assert_eq!(cp.server.metric("xds_auth_expired_streams_total"), 0.0);

    // The renewal, before the expiry.
    reviewer.accept("tok-renewed", identity("a"));
    let reads = token_reads(&envoy).await;
    write_token(&token_file, "tok-renewed");
    wait_token_reloaded(&envoy, reads).await;
    assert_eq!(
        cp.server.metric("xds_auth_expired_streams_total"),
        0.0,
        "the renewal was read only after the first token expired: the test needs a longer lifetime"
    );

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while cp.server.metric("xds_auth_admissions_total") < 2.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "Envoy did not come back after its token expired:\n{}",
            cp.server.metrics()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        cp.server.metric("xds_auth_expired_streams_total"),
        1.0,
        "the first stream ended at its token's expiry"
    );
    assert_eq!(
        cp.server
            .metric("xds_auth_refusals_total{reason=\"invalid_token\"}"),
        0.0,
        "the next stream carried the renewed token"
    );
    // The configuration outlived the stream: nothing was removed, and the new stream is live.
    envoy.wait_stat("control_plane.connected_state", |v| v == 1).await;
    assert_eq!(envoy.stat("cluster_manager.cluster_removed").await, 0);
    assert!(envoy.admin_get("/config_dump").await.contains("c-a.default-1"));
    // The renewed token has no expiry here: the stream stays.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(cp.server.metric("xds_auth_expired_streams_total"), 1.0);
    assert_eq!(cp.server.metric("xds_auth_admissions_total"), 2.0);
}
