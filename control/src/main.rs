//! `traffic-control`: serve ADS from a model file or Kubernetes, or print one node's config.

use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tracing::{info, warn};
use traffic_control::cli::{AnalyzeArgs, Cli, Command, ConfigArgs, ServeArgs};
use traffic_control::{analyze, manifests, model_file, node_config, rebuild};
use traffic_kube_source::istio_status_writer::{KubeStatusWriter, StatusWriter};
use traffic_kube_source::{
    rejection_sink, EventMetrics, EventSink, EventsConfig, KubeEvents, KubeSource, SourceConfig,
    SourceMetrics,
};
use traffic_translate::model::MeshModel;
use traffic_translate::snapshot::MeshSnapshot;
use traffic_xds::{IgnoreRejections, RejectionSink, StaticSnapshot, XdsMetrics, XdsServer};

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            let rt = tokio::runtime::Runtime::new().context("cannot start the Tokio runtime")?;
            rt.block_on(serve(*args))
        }
        Command::Config(args) => config(args),
        Command::Analyze(args) => {
            let errors = run_analyze(args)?;
            std::process::exit(if errors > 0 { 1 } else { 0 })
        }
    }
}

/// Prints the findings; returns how many are errors.
fn run_analyze(args: AnalyzeArgs) -> anyhow::Result<usize> {
    let report = analyze::analyze(&args.paths)?;
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(report.lines().as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(e.into()),
        _ => {}
    }
    eprintln!("{}", report.summary());
    Ok(report.errors())
}

/// A model file, or manifests (see [`manifests::are_manifests`]).
fn load_model(paths: &[std::path::PathBuf]) -> anyhow::Result<MeshModel> {
    if manifests::are_manifests(paths)? {
        let m = manifests::load(paths)?;
        manifests::log_istio_problems(&m);
        return Ok(m.model);
    }
    Ok(MeshModel::from_yaml_file(&paths[0])?)
}

/// Returns freed heap to the OS every few seconds. A full first push to 1,000 proxies queues
/// ~1 GB of responses at once; glibc keeps those pages after they are sent unless asked
/// (measured with `cargo xtask bench xds`).
fn spawn_heap_trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    tokio::spawn(async {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            tick.tick().await;
            // SAFETY: malloc_trim only releases free heap pages; it has no preconditions.
            unsafe {
                libc::malloc_trim(0);
            }
        }
    });
}

fn config(args: ConfigArgs) -> anyhow::Result<()> {
    let model = load_model(&args.model)?;
    let t = rebuild::translate_logged(&model, &args.translate.options());
    let snapshot = traffic_control::grpc::WithApiListeners::from_translation(t.snapshot);
    let resources = snapshot.for_node(&args.node_id);
    let text = node_config::render(
        &args.node_id,
        &resources,
        args.only.as_deref(),
        args.format,
        &model.istio,
    )
    .context("cannot render the node's resources")?;
    // `| head` closes the pipe early: that is not an error (println! would panic).
    use std::io::Write;
    match writeln!(std::io::stdout().lock(), "{text}") {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    info!(config = ?args, "starting traffic-control");
    let mut registry = Registry::default();
    let xds_metrics = XdsMetrics::register(&mut registry);
    let rebuild_metrics = rebuild::RebuildMetrics::register(&mut registry);

    // The Kubernetes source debounces itself; the file source relies on the rebuild's debounce.
    #[expect(
        clippy::type_complexity,
        reason = "one tuple per source, destructured at once"
    )]
    let (models, sink, problem_events, status_writer, quiet, _source): (
        watch::Receiver<Arc<MeshModel>>,
        Arc<dyn RejectionSink>,
        Option<Arc<dyn EventSink>>,
        Option<Arc<dyn StatusWriter>>,
        _,
        _,
    ) = match args.model.as_slice() {
        [] => {
            let client = kube::Client::try_default()
                .await
                .context("no --model and no usable Kubernetes configuration (in-cluster or KUBECONFIG)")?;
            let events_config = EventsConfig {
                instance: args.pod_name.clone(),
                ..EventsConfig::default()
            };
            let (events, _events_task) = KubeEvents::spawn(
                client.clone(),
                events_config,
                EventMetrics::register(&mut registry),
            );
            let source_config = SourceConfig {
                namespace: args.namespace.clone(),
                debounce: args.debounce(),
                ..SourceConfig::default()
            };
            let source = KubeSource::start(
                client.clone(),
                source_config,
                SourceMetrics::register(&mut registry),
                Some(Arc::new(events.clone())),
            )
            .await
            .context("cannot sync the mesh model from Kubernetes")?;
            info!("mesh model synced from Kubernetes");
            let (status, _status_task) = KubeStatusWriter::spawn(client, source.istio.clone());
            (
                source.models.clone(),
                rejection_sink(events.clone()),
                Some(Arc::new(events)),
                Some(Arc::new(status)),
                std::time::Duration::ZERO,
                Some(source),
            )
        }
        paths if manifests::are_manifests(paths)? => {
            let (rx, _task) = manifests::watch_manifests(paths.to_vec(), args.model_poll())
                .context("cannot load the manifests")?;
            (rx, Arc::new(IgnoreRejections), None, None, args.debounce(), None)
        }
        [path, ..] => {
            let (rx, _task) = model_file::watch_model_file(path.clone(), args.model_poll())
                .with_context(|| format!("cannot load the model file {}", path.display()))?;
            (rx, Arc::new(IgnoreRejections), None, None, args.debounce(), None)
        }
    };

    let admit = if args.auth.xds_auth {
        let client = kube::Client::try_default().await.context(
            "--xds-auth (the default) needs a Kubernetes API server (TokenReview); \
                 pass --xds-auth=false --xds-tls=false to serve without one (development only)",
        )?;
        if args.auth.gateway_service_accounts.is_empty() {
            warn!("--xds-auth without --gateway-service-accounts: no client may be traffic-ingress");
        }
        info!(
            gateways = ?args.auth.gateway_service_accounts,
            peer_check = args.auth.xds_auth_peer_check,
            "ADS streams are authenticated (ServiceAccount tokens, audience traffic-control)"
        );
        Some(traffic_control::xds_auth::authenticator(
            client,
            models.clone(),
            args.auth.gateway_service_accounts.clone(),
            args.auth.xds_auth_peer_check,
            std::time::Duration::from_secs(args.auth.token_cache_secs),
        ))
    } else {
        warn!("ADS streams are NOT authenticated (--xds-auth is off): any client may ask for any node's configuration");
        None
    };
    let tls_identity = if args.auth.xds_tls {
        let store: Box<dyn traffic_control::xds_tls::CaStore> = match &args.auth.xds_ca_dir {
            Some(dir) => Box::new(traffic_control::xds_tls::DirCaStore(dir.clone())),
            None => Box::new(traffic_control::xds_tls::KubeCaStore {
                client: kube::Client::try_default()
                    .await
                    .context("--xds-tls without --xds-ca-dir keeps the CA in a Secret: needs Kubernetes")?,
                namespace: args.auth.own_namespace.clone(),
                name: args.auth.xds_ca_name.clone(),
            }),
        };
        let ca = traffic_control::xds_tls::ensure_ca(store.as_ref())
            .await
            .context("cannot obtain the xDS CA")?;
        if args.auth.xds_tls_names.is_empty() {
            anyhow::bail!(
                "--xds-tls (the default) needs --xds-tls-names (the names clients dial); \
                 --xds-tls=false serves plaintext (development only)"
            );
        }
        let cert = ca
            .issue_server(&args.auth.xds_tls_names)
            .context("cannot issue the xDS server certificate")?;
        info!(names = ?args.auth.xds_tls_names, "ADS is served over TLS");
        Some((cert.cert_pem, cert.key_pem))
    } else {
        warn!("ADS is served in plaintext (--xds-tls is off)");
        None
    };
    let empty: Arc<dyn MeshSnapshot> = Arc::new(StaticSnapshot::default());
    let (snapshots_tx, snapshots_rx) = watch::channel(empty);
    let rebuild_task = tokio::spawn(rebuild::run(
        models,
        args.translate.options(),
        quiet,
        snapshots_tx,
        rebuild_metrics,
        problem_events,
        status_writer,
    ));
    let server = XdsServer::with_admission(snapshots_rx, xds_metrics, sink, admit)?;
    let listener = tokio::net::TcpListener::bind(args.xds_addr)
        .await
        .with_context(|| format!("cannot listen on {}", args.xds_addr))?;
    info!(addr = %args.xds_addr, "serving ADS");
    spawn_heap_trim();
    let registry = Arc::new(registry);
    let http_addr = args.http_addr;
    let http_task = tokio::spawn(async move { traffic_metrics_http::serve(http_addr, registry).await });
    info!(addr = %http_addr, "serving /metrics and /healthz");
    // ADS streams never end by themselves, so a graceful server shutdown would wait for them until
    // the kubelet's SIGKILL (30 s later, while every proxy stays on this dying replica). On SIGTERM
    // (a pod deletion or rollout) or SIGINT the process exits instead: the streams close, and the
    // proxies, which keep their configuration, reconnect to the Service's ready replica.
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot handle SIGTERM")?;
    tokio::select! {
        r = server.serve_tls(listener, tls_identity, std::future::pending()) => r?,
        r = http_task => {
            r.context("http task")?.with_context(|| format!("cannot serve HTTP on {http_addr}"))?;
        }
        _ = rebuild_task => warn!("model source ended"),
        _ = sigterm.recv() => info!("SIGTERM: shutting down; ADS streams close"),
        _ = tokio::signal::ctrl_c() => info!("SIGINT: shutting down; ADS streams close"),
    }
    Ok(())
}
