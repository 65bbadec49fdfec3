//! xDS scale benchmark (run through `cargo xtask bench xds`): a synthetic mesh of N services x M
//! pods, translated once (full rebuild time), served by the real ADS server on loopback to S
//! concurrent in-process tonic ADS clients that subscribe to everything and ACK every response
//! like Envoy. Then one endpoint changes at a time: the time from publishing the new snapshot to
//! each stream receiving the changed assignment is measured (p50/p99 over streams and changes).
//! RSS is this process's (server + clients), sampled before and after the clients connect.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use traffic_control::grpc::WithApiListeners;
use traffic_translate::model::MeshModel;
use traffic_translate::snapshot::{MeshSnapshot, CLUSTER, ENDPOINT, LISTENER, ROUTE};
use traffic_translate::translate::{translate, Options};
use traffic_xds::{IgnoreRejections, XdsMetrics, XdsServer};

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value_t = 1000)]
    services: usize,
    #[arg(long, default_value_t = 10)]
    pods_per_service: usize,
    #[arg(long, default_value_t = 1000)]
    streams: usize,
    /// Endpoint changes to time.
    #[arg(long, default_value_t = 10)]
    changes: usize,
    /// Use delta ADS instead of state-of-the-world.
    #[arg(long)]
    delta: bool,
}

fn model(services: usize, pods: usize, bump: usize) -> anyhow::Result<MeshModel> {
    let mut y = String::from("services:\n");
    for s in 0..services {
        y.push_str(&format!(
            "- name: svc{s}\n  clusterIPs: [10.96.{}.{}]\n  ports: [{{name: http, port: 9080}}]\n  selector: {{app: svc{s}}}\n  labels: {{traffic.port.9080: http}}\n",
            s / 250,
            s % 250 + 1
        ));
    }
    y.push_str("pods:\n");
    for s in 0..services {
        for p in 0..pods {
            let n = s * pods + p;
            // `bump` moves one pod of service 0 to another IP: one endpoint change.
            let last = if s == 0 && p == 0 {
                200 + bump % 50
            } else {
                n % 250 + 1
            };
            y.push_str(&format!(
                "- {{name: svc{s}-{p}, ip: 10.{}.{}.{last}, labels: {{app: svc{s}}}}}\n",
                1 + n / 62500,
                (n / 250) % 250
            ));
        }
    }
    MeshModel::from_yaml_str(&y).context("synthetic model")
}

fn rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("VmRSS:")
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            })
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// What a client reports: its stream index and when it saw an endpoint update.
type Seen = (usize, Instant);

async fn sotw_client(
    url: String,
    id: usize,
    clusters: Vec<String>,
    routes: Vec<String>,
    ready: mpsc::Sender<usize>,
    seen: mpsc::UnboundedSender<Seen>,
) -> anyhow::Result<()> {
    let mut client = AggregatedDiscoveryServiceClient::connect(url).await?;
    let (tx, rx) = mpsc::channel(16);
    let node = Some(Node {
        id: format!("bench{id}.default"),
        ..Default::default()
    });
    let mut inbound = client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let names = |t: &str| -> Vec<String> {
        match t {
            ENDPOINT => clusters.clone(),
            ROUTE => routes.clone(),
            _ => vec![],
        }
    };
    for t in [CLUSTER, ENDPOINT, LISTENER, ROUTE] {
        tx.send(DiscoveryRequest {
            node: node.clone(),
            type_url: t.into(),
            resource_names: names(t),
            ..Default::default()
        })
        .await?;
    }
    let mut initial = 4;
    while let Some(resp) = inbound.message().await? {
        if resp.type_url == ENDPOINT && initial == 0 {
            let _ = seen.send((id, Instant::now()));
        }
        tx.send(DiscoveryRequest {
            type_url: resp.type_url.clone(),
            resource_names: names(&resp.type_url),
            version_info: resp.version_info.clone(),
            response_nonce: resp.nonce.clone(),
            ..Default::default()
        })
        .await?;
        if initial > 0 {
            initial -= 1;
            if initial == 0 {
                ready.send(id).await?;
            }
        }
    }
    Ok(())
}

async fn delta_client(
    url: String,
    id: usize,
    clusters: Vec<String>,
    routes: Vec<String>,
    ready: mpsc::Sender<usize>,
    seen: mpsc::UnboundedSender<Seen>,
) -> anyhow::Result<()> {
    let mut client = AggregatedDiscoveryServiceClient::connect(url).await?;
    let (tx, rx) = mpsc::channel(16);
    let node = Some(Node {
        id: format!("bench{id}.default"),
        ..Default::default()
    });
    let mut inbound = client
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await?
        .into_inner();
    for (t, names) in [
        (CLUSTER, vec![]),
        (ENDPOINT, clusters),
        (LISTENER, vec![]),
        (ROUTE, routes),
    ] {
        tx.send(DeltaDiscoveryRequest {
            node: node.clone(),
            type_url: t.into(),
            resource_names_subscribe: names,
            ..Default::default()
        })
        .await?;
    }
    let mut initial = 4;
    while let Some(resp) = inbound.message().await? {
        if resp.type_url == ENDPOINT && initial == 0 {
            let _ = seen.send((id, Instant::now()));
        }
        tx.send(DeltaDiscoveryRequest {
            type_url: resp.type_url.clone(),
            response_nonce: resp.nonce.clone(),
            ..Default::default()
        })
        .await?;
        if initial > 0 {
            initial -= 1;
            if initial == 0 {
                ready.send(id).await?;
            }
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let rss_start = rss_mb();
    let m = model(args.services, args.pods_per_service, 0)?;
    let opts = Options::default();
    let mut rebuilds = Vec::new();
    let mut t = translate(&m, &opts);
    for _ in 0..3 {
        let started = Instant::now();
        t = translate(&m, &opts);
        let _with_grpc = WithApiListeners::from_translation(t.snapshot.clone());
        rebuilds.push(started.elapsed());
    }
    rebuilds.sort();
    let sample = t.snapshot.for_node("bench0.default");
    let count = |ty: &str| sample.by_type.get(ty).map(|r| r.len()).unwrap_or(0);
    let endpoints: usize = m.pods.len();
    println!(
        "model: {} services, {} endpoints -> {} clusters, {} assignments, {} listeners, {} routes",
        args.services,
        endpoints,
        count(CLUSTER),
        count(ENDPOINT),
        count(LISTENER),
        count(ROUTE)
    );
    println!(
        "full rebuild (translate whole model): median {:?} (of 3)",
        rebuilds[1]
    );
    let clusters: Vec<String> = sample
        .by_type
        .get(ENDPOINT)
        .map(|r| r.keys().cloned().collect())
        .unwrap_or_default();
    let routes: Vec<String> = sample
        .by_type
        .get(ROUTE)
        .map(|r| r.keys().cloned().collect())
        .unwrap_or_default();

    let first: Arc<dyn MeshSnapshot> = Arc::new(WithApiListeners::from_translation(t.snapshot));
    let (snap_tx, snap_rx) = watch::channel(first);
    let mut registry = Registry::default();
    let server = XdsServer::new(
        snap_rx,
        XdsMetrics::register(&mut registry),
        Arc::new(IgnoreRejections),
    )?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(server.serve(listener, std::future::pending()));
    let rss_server = rss_mb();

    let (ready_tx, mut ready_rx) = mpsc::channel(args.streams);
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel();
    let connect_started = Instant::now();
    for id in 0..args.streams {
        let (u, c, r, rd, s) = (
            url.clone(),
            clusters.clone(),
            routes.clone(),
            ready_tx.clone(),
            seen_tx.clone(),
        );
        let delta = args.delta;
        tokio::spawn(async move {
            let res = if delta {
                delta_client(u, id, c, r, rd, s).await
            } else {
                sotw_client(u, id, c, r, rd, s).await
            };
            if let Err(e) = res {
                eprintln!("client {id}: {e:#}");
            }
        });
    }
    for _ in 0..args.streams {
        tokio::time::timeout(Duration::from_secs(120), ready_rx.recv())
            .await
            .context("clients did not sync in 120 s")?;
    }
    println!(
        "{} {} streams synced (all types ACKed) in {:?}",
        args.streams,
        if args.delta { "delta" } else { "SotW" },
        connect_started.elapsed()
    );
    let rss_clients = rss_mb();

    let mut latencies = Vec::new();
    for change in 1..=args.changes {
        let m = model(args.services, args.pods_per_service, change)?;
        let t = translate(&m, &opts);
        let published = Instant::now();
        snap_tx.send_replace(Arc::new(WithApiListeners::from_translation(t.snapshot)));
        let mut got = BTreeMap::new();
        while got.len() < args.streams {
            let (id, at) = tokio::time::timeout(Duration::from_secs(30), seen_rx.recv())
                .await
                .context("not every stream got the change in 30 s")?
                .context("clients gone")?;
            got.entry(id).or_insert(at.saturating_duration_since(published));
        }
        let mut this: Vec<Duration> = got.into_values().collect();
        this.sort();
        println!(
            "change {change}: every stream had it after {:?} (p50 {:?})",
            this[this.len() - 1],
            pct(&this, 0.5)
        );
        latencies.extend(this);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    latencies.sort();
    println!(
        "endpoint change -> stream latency over {} deliveries: p50 {:?}, p99 {:?}, max {:?}",
        latencies.len(),
        pct(&latencies, 0.5),
        pct(&latencies, 0.99),
        latencies.last().copied().unwrap_or_default()
    );
    println!(
        "RSS: start {rss_start:.0} MB, server with snapshot {rss_server:.0} MB, with {} streams (server + in-process clients) {rss_clients:.0} MB, end {:.0} MB",
        args.streams,
        rss_mb()
    );
    Ok(())
}
