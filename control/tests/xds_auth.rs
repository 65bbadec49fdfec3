//! Authenticated ADS against the real server over real gRPC: a fake token reviewer stands in for
//! the API server's TokenReview (the real one is exercised on the cluster), everything else is
//! the production admission path (policy, pod directory, secrets filter, gRPC status).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use common::ads::TestServer;
use common::resources::{listener, resource};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DiscoveryRequest, DiscoveryResponse,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use traffic_translate::snapshot::{MeshSnapshot, NodeResources, LISTENER, SECRET};
use traffic_xds_auth::review::{POD_NAME_EXTRA, POD_UID_EXTRA};
use traffic_xds_auth::{Authenticator, FakeReviewer, Identity, PodFacts, Policy, ReviewError, StaticPods};

/// Every node gets a listener named after itself and the gateway's TLS key (the filter must keep
/// the key from everyone but the gateway).
#[derive(Debug)]
struct PerNode;

impl MeshSnapshot for PerNode {
    fn for_node(&self, node_id: &str) -> NodeResources {
        let mut nr = NodeResources::default();
        let l = listener(&format!("l-{node_id}"), 1);
        nr.make_mut(LISTENER).insert(l.name.clone(), l);
        let key = Secret {
            name: "ingress-key".into(),
            ..Default::default()
        };
        nr.make_mut(SECRET)
            .insert("ingress-key".into(), resource("ingress-key", &key, None));
        nr
    }
}

fn identity(ns: &str, sa: &str, pod: &str) -> Identity {
    let extra = BTreeMap::from([
        (POD_NAME_EXTRA.to_string(), vec![pod.to_string()]),
        (POD_UID_EXTRA.to_string(), vec![format!("uid-{pod}")]),
    ]);
    Identity::from_user(&format!("system:serviceaccount:{ns}:{sa}"), &extra, None).expect("identity")
}

async fn server() -> TestServer {
    let reviewer = FakeReviewer::default();
    reviewer.accept("tok-a", identity("default", "web", "a"));
    reviewer.accept("tok-b", identity("default", "web", "b"));
    reviewer.accept("tok-elsewhere", identity("default", "web", "elsewhere"));
    reviewer.accept("tok-gw", identity("traffic-system", "traffic-ingress", "gw-1"));
    reviewer.reject("tok-expired", ReviewError::Rejected("token has expired".into()));
    reviewer.reject(
        "tok-other-audience",
        ReviewError::Rejected("token audiences are invalid".into()),
    );
    let facts = |pod: &str, ip: &str| PodFacts {
        uid: format!("uid-{pod}"),
        ip: Some(ip.parse().expect("ip")),
    };
    let pods = StaticPods(HashMap::from([
        (("default".into(), "a".into()), facts("a", "127.0.0.1")),
        (("default".into(), "b".into()), facts("b", "127.0.0.1")),
        (
            ("default".into(), "elsewhere".into()),
            facts("elsewhere", "10.9.9.9"),
        ),
        (
            ("traffic-system".into(), "gw-1".into()),
            facts("gw-1", "127.0.0.1"),
        ),
    ]));
    let auth = Authenticator::new(
        Arc::new(reviewer),
        Arc::new(pods),
        Policy {
            gateway_service_accounts: vec!["traffic-system/traffic-ingress".parse().expect("sa")],
            check_peer: true,
        },
    );
    TestServer::start_admitting("127.0.0.1:0", Arc::new(PerNode), Some(Arc::new(auth))).await
}

/// One SotW stream as `node` with `token`, subscribing to listeners and secrets: the first
/// responses, or the status that ended the stream.
async fn ask(
    server: &TestServer,
    token: Option<&str>,
    node: &str,
) -> Result<Vec<DiscoveryResponse>, tonic::Status> {
    let mut client = AggregatedDiscoveryServiceClient::connect(server.url())
        .await
        .expect("connect");
    let (tx, rx) = mpsc::channel(8);
    for type_url in [LISTENER, SECRET] {
        tx.send(DiscoveryRequest {
            node: Some(envoy_types::pb::envoy::config::core::v3::Node {
                id: node.into(),
                ..Default::default()
            }),
            type_url: type_url.into(),
            resource_names: if type_url == SECRET {
                vec!["ingress-key".into()]
            } else {
                vec![]
            },
            ..Default::default()
        })
        .await
        .expect("queue");
    }
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    if let Some(t) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().expect("header"));
    }
    let mut stream = client.stream_aggregated_resources(request).await?.into_inner();
    let mut out = Vec::new();
    loop {
        // The first answer (a response or the refusal) may take a while on a loaded machine;
        // after it, a quiet second means everything that was going to come came.
        let wait = if out.is_empty() {
            Duration::from_secs(10)
        } else {
            Duration::from_secs(1)
        };
        match tokio::time::timeout(wait, stream.message()).await {
            Err(_) => return Ok(out), // quiet: everything that was going to come came
            Ok(Ok(Some(r))) => out.push(r),
            Ok(Ok(None)) => return Ok(out),
            Ok(Err(status)) if out.is_empty() => return Err(status),
            Ok(Err(status)) => panic!("stream failed after {} responses: {status}", out.len()),
        }
    }
}

fn refused(r: Result<Vec<DiscoveryResponse>, tonic::Status>) -> tonic::Code {
    match r {
        Ok(responses) => panic!("served {} responses", responses.len()),
        Err(status) => status.code(),
    }
}

fn names(responses: &[DiscoveryResponse], type_url: &str) -> Vec<String> {
    responses
        .iter()
        .filter(|r| r.type_url == type_url)
        .flat_map(|r| r.resources.iter())
        .map(common::resources::name_of_any)
        .collect()
}

#[tokio::test]
async fn without_a_valid_token_nothing_is_served() {
    let s = server().await;
    assert_eq!(
        refused(ask(&s, None, "a.default").await),
        tonic::Code::Unauthenticated
    );
    assert_eq!(
        refused(ask(&s, Some("forged"), "a.default").await),
        tonic::Code::Unauthenticated
    );
    assert_eq!(
        refused(ask(&s, Some("tok-expired"), "a.default").await),
        tonic::Code::Unauthenticated
    );
    assert_eq!(
        refused(ask(&s, Some("tok-other-audience"), "a.default").await),
        tonic::Code::Unauthenticated
    );
    assert_eq!(s.metric("xds_auth_refusals_total{reason=\"no_token\"}"), 1.0);
    assert_eq!(s.metric("xds_auth_refusals_total{reason=\"invalid_token\"}"), 3.0);
    assert_eq!(s.metric("xds_pushes_total{mode=\"sotw\",type=\"listener\"}"), 0.0);
}

#[tokio::test]
async fn a_token_is_only_its_own_pod_from_its_own_address() {
    let s = server().await;
    assert_eq!(
        refused(ask(&s, Some("tok-a"), "b.default").await),
        tonic::Code::PermissionDenied
    );
    assert_eq!(
        refused(ask(&s, Some("tok-a"), "traffic-ingress").await),
        tonic::Code::PermissionDenied
    );
    assert_eq!(
        refused(ask(&s, Some("tok-elsewhere"), "elsewhere.default").await),
        tonic::Code::PermissionDenied,
        "the pod's IP is not the peer's"
    );
    assert_eq!(s.metric("xds_auth_refusals_total{reason=\"node_mismatch\"}"), 1.0);
    assert_eq!(s.metric("xds_auth_refusals_total{reason=\"not_gateway\"}"), 1.0);
    assert_eq!(s.metric("xds_auth_refusals_total{reason=\"peer_mismatch\"}"), 1.0);

    let a = ask(&s, Some("tok-a"), "a.default").await.expect("served");
    assert_eq!(names(&a, LISTENER), ["l-a.default"], "its own config only");
    assert!(names(&a, SECRET).is_empty(), "a sidecar never gets a secret");
    let b = ask(&s, Some("tok-b"), "proxyless~b.default")
        .await
        .expect("served");
    assert_eq!(names(&b, LISTENER), ["l-proxyless~b.default"]);
    assert!(names(&b, SECRET).is_empty());
    assert_eq!(s.metric("xds_auth_admissions_total"), 2.0);
}

#[tokio::test]
async fn the_gateway_identity_gets_its_secrets() {
    let s = server().await;
    let gw = ask(&s, Some("tok-gw"), "traffic-ingress").await.expect("served");
    assert_eq!(names(&gw, LISTENER), ["l-traffic-ingress"]);
    assert_eq!(names(&gw, SECRET), ["ingress-key"]);
}

#[tokio::test]
async fn delta_streams_are_refused_the_same_way() {
    let s = server().await;
    let mut client = AggregatedDiscoveryServiceClient::connect(s.url())
        .await
        .expect("connect");
    let (tx, rx) = mpsc::channel(8);
    tx.send(DeltaDiscoveryRequest {
        node: Some(envoy_types::pb::envoy::config::core::v3::Node {
            id: "b.default".into(),
            ..Default::default()
        }),
        type_url: LISTENER.into(),
        ..Default::default()
    })
    .await
    .expect("queue");
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    request
        .metadata_mut()
        .insert("authorization", "Bearer tok-a".parse().expect("header"));
    let mut stream = client
        .delta_aggregated_resources(request)
        .await
        .expect("stream")
        .into_inner();
    let status = stream.message().await.expect_err("refused");
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
}
