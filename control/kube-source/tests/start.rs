//! Starting against an API server that does not answer (a real closed port, no cluster needed).
#![expect(clippy::unwrap_used, reason = "tests fail loudly")]

use std::time::{Duration, Instant};

use traffic_kube_source::{KubeSource, SourceConfig, SourceError, SourceMetrics};

#[tokio::test]
async fn start_gives_up_with_a_sync_timeout_and_counts_watch_errors_when_the_api_server_is_unreachable() {
    // Bind then drop: a local port that refuses connections.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = kube::Config::new(format!("http://127.0.0.1:{port}").parse().unwrap());
    let client = kube::Client::try_from(config).unwrap();
    let metrics = SourceMetrics::default();
    let started = Instant::now();
    let result = KubeSource::start(
        client,
        SourceConfig {
            sync_timeout: Duration::from_secs(2),
            ..SourceConfig::default()
        },
        metrics.clone(),
        None,
    )
    .await;
    assert!(matches!(result, Err(SourceError::SyncTimeout(_))));
    assert!(started.elapsed() < Duration::from_secs(5));
    let message = result.err().unwrap().to_string();
    assert!(message.contains("list and watch"), "{message}");
    let labels = traffic_kube_source::watch::ResourceLabels { resource: "services" };
    assert!(metrics.watch_errors.get_or_create(&labels).get() >= 1);
    assert_eq!(metrics.models.get(), 0);
}
