//! An in-process ADS server and ADS clients that check the protocol's invariants on every
//! response (go-control-plane `pkg/server/v3/server_test.go` style).

use std::collections::{BTreeSet, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::rpc::Status;
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use traffic_translate::snapshot::{MeshSnapshot, NodeResources, ObjectRef, Resource};
use traffic_xds::{RejectionSink, StaticSnapshot, XdsMetrics, XdsServer};

use super::resources::name_of;

/// What a [`RecordingSink`] saw.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    pub node: String,
    pub type_url: String,
    /// The rejected resources' names.
    pub resources: Vec<String>,
    pub origins: Vec<ObjectRef>,
    pub message: String,
}

#[derive(Debug, Default, Clone)]
pub struct RecordingSink(pub Arc<Mutex<Vec<Rejected>>>);

impl RejectionSink for RecordingSink {
    fn rejected(&self, node: &str, type_url: &str, resources: &[Arc<Resource>], message: &str) {
        self.0.lock().expect("sink lock").push(Rejected {
            node: node.into(),
            type_url: type_url.into(),
            resources: resources.iter().map(|r| r.name.clone()).collect(),
            origins: resources.iter().filter_map(|r| r.origin.clone()).collect(),
            message: message.into(),
        });
    }
}

/// An xDS server on 127.0.0.1:<free port>, stopped on drop.
pub struct TestServer {
    pub addr: SocketAddr,
    pub snapshots: watch::Sender<Arc<dyn MeshSnapshot>>,
    pub registry: Registry,
    pub rejections: RecordingSink,
    shutdown: Option<oneshot::Sender<()>>,
}

impl TestServer {
    pub async fn start(initial: NodeResources) -> Self {
        Self::start_with(Arc::new(StaticSnapshot(initial))).await
    }

    pub async fn start_with(initial: Arc<dyn MeshSnapshot>) -> Self {
        Self::start_on("127.0.0.1:0", initial).await
    }

    pub async fn start_on(bind: &str, initial: Arc<dyn MeshSnapshot>) -> Self {
        Self::start_admitting(bind, initial, None).await
    }

    /// A server serving only the streams `admit` admits (`None`: all).
    pub async fn start_admitting(
        bind: &str,
        initial: Arc<dyn MeshSnapshot>,
        admit: Option<Arc<dyn traffic_xds::Admit>>,
    ) -> Self {
        Self::start_full(bind, initial, admit, None).await
    }

    /// Everything: admission hook, and TLS with `identity` (certificate, key; PEM).
    pub async fn start_full(
        bind: &str,
        initial: Arc<dyn MeshSnapshot>,
        admit: Option<Arc<dyn traffic_xds::Admit>>,
        identity: Option<(String, String)>,
    ) -> Self {
        let (snapshots, rx) = watch::channel(initial);
        let mut registry = Registry::default();
        let metrics = XdsMetrics::register(&mut registry);
        let rejections = RecordingSink::default();
        let server =
            XdsServer::with_admission(rx, metrics, Arc::new(rejections.clone()), admit).expect("server");
        let listener = bind_reusing(bind.parse().expect("bind address")).await;
        let addr = listener.local_addr().expect("addr");
        let (tx, stop) = oneshot::channel();
        tokio::spawn(async move {
            server
                .serve_tls(listener, identity, async {
                    let _ = stop.await;
                })
                .await
                .expect("serve");
        });
        TestServer {
            addr,
            snapshots,
            registry,
            rejections,
            shutdown: Some(tx),
        }
    }

    pub fn publish(&self, resources: NodeResources) {
        self.publish_snapshot(Arc::new(StaticSnapshot(resources)));
    }

    pub fn publish_snapshot(&self, snapshot: Arc<dyn MeshSnapshot>) {
        self.snapshots.send_replace(snapshot);
    }

    pub fn metrics(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("encode");
        out
    }

    /// The value of one sample line, e.g. `xds_nacks_total{mode="sotw",type="cluster"}`.
    pub fn metric(&self, sample: &str) -> f64 {
        self.metrics()
            .lines()
            .find_map(|l| l.strip_prefix(sample).and_then(|rest| rest.trim().parse().ok()))
            .unwrap_or(0.0)
    }

    /// Polls one sample until `cond(value)` holds (e.g. an ACK the client sends just after it
    /// applied what its config dump already shows); panics with every metric after 15 s.
    #[allow(dead_code)]
    pub async fn wait_metric(&self, sample: &str, cond: impl Fn(f64) -> bool) -> f64 {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let v = self.metric(sample);
            if cond(v) {
                return v;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {sample}:\n{}",
                self.metrics()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until this server has counted at least one ACK of each of `types` (`listener`,
    /// `route`, ...) over `mode` (`sotw` or `delta`): a client ACKs just after applying, so a
    /// rejection of anything it got by then would already show in its stats.
    #[allow(dead_code)]
    pub async fn wait_acked(&self, mode: &str, types: &[&str]) {
        for t in types {
            self.wait_metric(
                &format!("xds_acks_total{{mode=\"{mode}\",type=\"{t}\"}}"),
                |acks| acks >= 1.0,
            )
            .await;
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Binds with SO_REUSEADDR, retrying for a while: a restarted server binds the port its killed
/// predecessor's connections still linger on.
async fn bind_reusing(addr: SocketAddr) -> tokio::net::TcpListener {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        }
        .expect("socket");
        socket.set_reuseaddr(true).expect("SO_REUSEADDR");
        match socket.bind(addr).and_then(|()| socket.listen(1024)) {
            Ok(listener) => return listener,
            Err(e) if std::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("bind {addr}: {e}"),
        }
    }
}

pub const RECV_TIMEOUT: Duration = Duration::from_secs(5);

fn node(id: &str) -> Option<Node> {
    Some(Node {
        id: id.to_string(),
        cluster: "test".into(),
        ..Default::default()
    })
}

/// A SotW ADS client that checks every response.
pub struct SotwClient {
    node: String,
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: Streaming<DiscoveryResponse>,
    nonces: HashSet<String>,
}

impl SotwClient {
    pub async fn connect(url: &str, node_id: &str) -> Self {
        let mut client = AggregatedDiscoveryServiceClient::connect(url.to_string())
            .await
            .expect("connect");
        let (tx, rx) = mpsc::channel(64);
        let resp = client
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await
            .expect("stream");
        SotwClient {
            node: node_id.to_string(),
            tx,
            rx: resp.into_inner(),
            nonces: HashSet::new(),
        }
    }

    pub async fn send(
        &self,
        type_url: &str,
        names: &[&str],
        version: &str,
        nonce: &str,
        error: Option<&str>,
    ) {
        let req = DiscoveryRequest {
            node: node(&self.node),
            type_url: type_url.to_string(),
            resource_names: names.iter().map(|s| s.to_string()).collect(),
            version_info: version.to_string(),
            response_nonce: nonce.to_string(),
            error_detail: error.map(|m| Status {
                code: 3,
                message: m.to_string(),
                details: vec![],
            }),
            ..Default::default()
        };
        self.tx.send(req).await.expect("send request");
    }

    /// Subscribes (first request of a type).
    pub async fn subscribe(&self, type_url: &str, names: &[&str]) {
        self.send(type_url, names, "", "", None).await;
    }

    pub async fn ack(&self, resp: &DiscoveryResponse, names: &[&str]) {
        self.send(&resp.type_url, names, &resp.version_info, &resp.nonce, None)
            .await;
    }

    pub async fn nack(&self, resp: &DiscoveryResponse, names: &[&str], kept_version: &str, message: &str) {
        self.send(&resp.type_url, names, kept_version, &resp.nonce, Some(message))
            .await;
    }

    /// The next response, after checking the invariants every response must satisfy.
    pub async fn recv(&mut self) -> DiscoveryResponse {
        let resp = tokio::time::timeout(RECV_TIMEOUT, self.rx.message())
            .await
            .expect("no response within 5 s")
            .expect("stream error")
            .expect("stream closed");
        assert!(!resp.nonce.is_empty(), "empty nonce: {resp:?}");
        assert!(
            self.nonces.insert(resp.nonce.clone()),
            "nonce {} reused on the stream",
            resp.nonce
        );
        assert!(!resp.type_url.is_empty(), "empty type_url");
        assert!(!resp.version_info.is_empty(), "empty version_info");
        let mut names = BTreeSet::new();
        for any in &resp.resources {
            assert_eq!(
                any.type_url, resp.type_url,
                "resource type differs from response type"
            );
            assert!(names.insert(name_of(any)), "duplicate resource in one response");
        }
        resp
    }

    /// Asserts that no response arrives within `wait`.
    pub async fn expect_silence(&mut self, wait: Duration) {
        if let Ok(r) = tokio::time::timeout(wait, self.rx.message()).await {
            panic!("unexpected response: {r:?}");
        }
    }
}

pub fn names(resp: &DiscoveryResponse) -> Vec<String> {
    resp.resources.iter().map(name_of).collect()
}

/// A delta ADS client that checks every response.
pub struct DeltaClient {
    node: String,
    tx: mpsc::Sender<DeltaDiscoveryRequest>,
    rx: Streaming<DeltaDiscoveryResponse>,
    nonces: HashSet<String>,
}

impl DeltaClient {
    pub async fn connect(url: &str, node_id: &str) -> Self {
        let mut client = AggregatedDiscoveryServiceClient::connect(url.to_string())
            .await
            .expect("connect");
        let (tx, rx) = mpsc::channel(64);
        let resp = client
            .delta_aggregated_resources(ReceiverStream::new(rx))
            .await
            .expect("stream");
        DeltaClient {
            node: node_id.to_string(),
            tx,
            rx: resp.into_inner(),
            nonces: HashSet::new(),
        }
    }

    pub async fn send(&self, req: DeltaDiscoveryRequest) {
        let req = DeltaDiscoveryRequest {
            node: node(&self.node),
            ..req
        };
        self.tx.send(req).await.expect("send request");
    }

    pub async fn subscribe(&self, type_url: &str, names: &[&str]) {
        self.send(DeltaDiscoveryRequest {
            type_url: type_url.into(),
            resource_names_subscribe: names.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
        .await;
    }

    pub async fn ack(&self, resp: &DeltaDiscoveryResponse) {
        self.send(DeltaDiscoveryRequest {
            type_url: resp.type_url.clone(),
            response_nonce: resp.nonce.clone(),
            ..Default::default()
        })
        .await;
    }

    pub async fn nack(&self, resp: &DeltaDiscoveryResponse, message: &str) {
        self.send(DeltaDiscoveryRequest {
            type_url: resp.type_url.clone(),
            response_nonce: resp.nonce.clone(),
            error_detail: Some(Status {
                code: 3,
                message: message.into(),
                details: vec![],
            }),
            ..Default::default()
        })
        .await;
    }

    pub async fn recv(&mut self) -> DeltaDiscoveryResponse {
        let resp = tokio::time::timeout(RECV_TIMEOUT, self.rx.message())
            .await
            .expect("no response within 5 s")
            .expect("stream error")
            .expect("stream closed");
        assert!(!resp.nonce.is_empty(), "empty nonce");
        assert!(
            self.nonces.insert(resp.nonce.clone()),
            "nonce {} reused on the stream",
            resp.nonce
        );
        let mut names = BTreeSet::new();
        for r in &resp.resources {
            assert!(
                !r.name.is_empty() && !r.version.is_empty(),
                "resource without name or version"
            );
            let body = r.resource.as_ref().expect("resource body");
            assert_eq!(
                body.type_url, resp.type_url,
                "resource type differs from response type"
            );
            assert_eq!(
                name_of(body),
                r.name,
                "wrapper name differs from the resource's name"
            );
            assert!(names.insert(r.name.clone()), "duplicate resource in one response");
        }
        for removed in &resp.removed_resources {
            assert!(!names.contains(removed), "{removed} both updated and removed");
        }
        resp
    }

    pub async fn expect_silence(&mut self, wait: Duration) {
        if let Ok(r) = tokio::time::timeout(wait, self.rx.message()).await {
            panic!("unexpected response: {r:?}");
        }
    }
}

pub fn updated(resp: &DeltaDiscoveryResponse) -> Vec<String> {
    resp.resources.iter().map(|r| r.name.clone()).collect()
}
