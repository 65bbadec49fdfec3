//! Connection setup of many ADS streams, plain vs. authenticated (TLS + bearer token, reviewed by
//! a cached in-process reviewer standing in for TokenReview): time from connect to each stream's
//! first response. A measurement, not a check: `cargo test -p traffic-control --release --test
//! xds_auth_setup_bench -- --ignored --nocapture` (STREAMS=1000 by default).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::ads::TestServer;
use common::resources::{cluster, node};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use traffic_translate::snapshot::CLUSTER;
use traffic_xds::StaticSnapshot;
use traffic_xds_auth::review::{POD_NAME_EXTRA, POD_UID_EXTRA};
use traffic_xds_auth::{
    Authenticator, CachingReviewer, FakeReviewer, Identity, PodFacts, Policy, StaticPods,
};

const NAME: &str = "traffic-control.traffic-system.svc";

async fn one(
    url: String,
    tls: Option<tonic::transport::ClientTlsConfig>,
    token: Option<String>,
    i: usize,
) -> Duration {
    let start = Instant::now();
    let mut endpoint = tonic::transport::Endpoint::from_shared(url).expect("url");
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls).expect("tls");
    }
    let channel = endpoint.connect().await.expect("connect");
    let mut client = AggregatedDiscoveryServiceClient::new(channel);
    let (tx, rx) = mpsc::channel(4);
    tx.send(DiscoveryRequest {
        node: Some(Node {
            id: format!("p{i}.default"),
            ..Default::default()
        }),
        type_url: CLUSTER.into(),
        ..Default::default()
    })
    .await
    .expect("queue");
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    if let Some(t) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().expect("header"));
    }
    let mut stream = client
        .stream_aggregated_resources(request)
        .await
        .expect("stream")
        .into_inner();
    stream
        .message()
        .await
        .expect("first response")
        .expect("a response");
    let took = start.elapsed();
    // Keep the stream open until every client is connected (as 1,000 sidecars would).
    tokio::spawn(async move {
        let _keep = (tx, stream);
        tokio::time::sleep(Duration::from_secs(600)).await;
    });
    took
}

async fn run(streams: usize, secure: bool) -> (Duration, Vec<Duration>) {
    let snapshot = Arc::new(StaticSnapshot(node(
        (0..100).map(|i| cluster(&format!("c{i}"), 1)),
    )));
    let (admit, identity, tls) = if secure {
        let fake = FakeReviewer::default();
        let mut pods = HashMap::new();
        for i in 0..streams {
            let extra = BTreeMap::from([
                (POD_NAME_EXTRA.to_string(), vec![format!("p{i}")]),
                (POD_UID_EXTRA.to_string(), vec![format!("u{i}")]),
            ]);
            let id =
                Identity::from_user("system:serviceaccount:default:web", &extra, None).expect("identity");
            fake.accept(&format!("tok-{i}"), id);
            pods.insert(
                ("default".to_string(), format!("p{i}")),
                PodFacts {
                    uid: format!("u{i}"),
                    ip: Some("127.0.0.1".parse().expect("ip")),
                },
            );
        }
        let reviewer = CachingReviewer::new(fake, Duration::from_secs(300));
        let auth = Authenticator::new(
            Arc::new(reviewer),
            Arc::new(StaticPods(pods)),
            Policy {
                gateway_service_accounts: vec![],
                check_peer: true,
            },
        );
        let ca = traffic_control::xds_tls::Ca::generate().expect("ca");
        let cert = ca.issue_server(&[NAME.to_string()]).expect("cert");
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(ca.cert_pem.clone()))
            .domain_name(NAME);
        (
            Some(Arc::new(auth) as Arc<dyn traffic_xds::Admit>),
            Some((cert.cert_pem, cert.key_pem)),
            Some(tls),
        )
    } else {
        (None, None, None)
    };
    let server = TestServer::start_full("127.0.0.1:0", snapshot, admit, identity).await;
    let url = if secure {
        format!("https://{}", server.addr)
    } else {
        server.url()
    };
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..streams {
        let token = secure.then(|| format!("tok-{i}"));
        set.spawn(one(url.clone(), tls.clone(), token, i));
    }
    let mut each = Vec::new();
    while let Some(r) = set.join_next().await {
        each.push(r.expect("client"));
    }
    let all = start.elapsed();
    if secure {
        assert_eq!(server.metric("xds_auth_admissions_total"), streams as f64);
    }
    each.sort();
    (all, each)
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "a measurement; run with --ignored --nocapture"]
async fn connection_setup_plain_vs_authenticated() {
    let streams: usize = std::env::var("STREAMS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    for secure in [false, true] {
        let (all, each) = run(streams, secure).await;
        let pct = |p: f64| each[((each.len() as f64 - 1.0) * p) as usize];
        println!(
            "{} streams, {}: all connected and served in {:.0} ms; per stream p50 {:.1} ms, p99 {:.1} ms",
            streams,
            if secure {
                "TLS + token (cached review, node binding, peer check)"
            } else {
                "plaintext, no authentication"
            },
            all.as_secs_f64() * 1e3,
            pct(0.5).as_secs_f64() * 1e3,
            pct(0.99).as_secs_f64() * 1e3,
        );
    }
}
