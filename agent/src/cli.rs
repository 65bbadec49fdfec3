//! The `run`, `proxies`, `logs`, `exec` and `uninstall` subcommands (flags, wiring, output).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use tracing::{info, warn};
use traffic_agent::apply::{Applier, KubeAnnotator, SidecarTemplate};
use traffic_agent::drain::{self, DaemonSetRef};
use traffic_agent::metrics::AgentMetrics;
use traffic_agent::reconcile::SidecarFailure;
use traffic_agent::watch::{self, ControllerConfig, DrainConfig};
use traffic_kube_source::events::{EventMetrics, EventsConfig, KubeEvents};
use traffic_redirect::ebpf::{EbpfRedirector, DEFAULT_PIN_ROOT};
use traffic_redirect::iptables::{IptablesRedirector, DEFAULT_STATE_DIR};
use traffic_redirect::{probe, Mode, Redirector};
use traffic_sidecar::admin::NetnsAdmin;
use traffic_sidecar::bootstrap::{AdsApiType, BootstrapOptions, DEFAULT_ADMIN_PORT};
use traffic_sidecar::listeners::ListenerWait;
use traffic_sidecar::operator;

use crate::runtime_args::{node_runtime_version, RuntimeArgs};

pub fn block_on<T>(f: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(f)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RedirectMode {
    /// Probe the node: eBPF when it works, else iptables.
    Auto,
    Ebpf,
    Iptables,
}

#[derive(Debug, Args)]
pub struct RedirectArgs {
    /// Redirect datapath.
    #[arg(long, env = "TRAFFIC_REDIRECT_MODE", value_enum, default_value = "auto")]
    pub redirect_mode: RedirectMode,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// This node's name (pods are watched with `spec.nodeName=<node>`).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,
    /// The xDS control plane (traffic-control) as host:port, reachable from pods.
    #[arg(long, env = "TRAFFIC_CONTROL_PLANE")]
    pub control_plane: String,
    /// ADS flavour the sidecars use: grpc (state of the world) or delta.
    #[arg(long, env = "TRAFFIC_ADS_API", default_value = "grpc")]
    pub ads_api: AdsApiType,
    /// Envoy image of the sidecars (must be present on the node or pullable).
    #[arg(long, env = "TRAFFIC_ENVOY_IMAGE", default_value = "envoyproxy/envoy:v1.39.3")]
    pub envoy_image: String,
    /// Envoy admin port on 127.0.0.1 in the pod netns.
    #[arg(long, env = "TRAFFIC_ENVOY_ADMIN_PORT", default_value_t = DEFAULT_ADMIN_PORT)]
    pub envoy_admin_port: u16,
    #[command(flatten)]
    pub redirect: RedirectArgs,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    /// `/metrics` and `/healthz`.
    #[arg(long, env = "TRAFFIC_AGENT_METRICS_ADDR", default_value = "0.0.0.0:15090")]
    pub metrics_addr: SocketAddr,
    /// Reconcile at least this often (seconds); also how fast a dead sidecar is noticed.
    #[arg(long, env = "TRAFFIC_AGENT_RESYNC_SECONDS", default_value_t = 10)]
    pub resync_seconds: u64,
    /// Pods reconciled concurrently.
    #[arg(long, env = "TRAFFIC_AGENT_CONCURRENCY", default_value_t = 4)]
    pub concurrency: usize,
    /// Seconds a sidecar may take to report ready (Envoy /ready).
    #[arg(long, env = "TRAFFIC_AGENT_READY_TIMEOUT_SECONDS", default_value_t = 30)]
    pub ready_timeout_seconds: u64,
    /// Seconds a ready sidecar may take to receive its listeners (first LDS update) before the
    /// pod is redirected to it; past that, a `SidecarNotConfigured` Event and the next round retries.
    #[arg(long, env = "TRAFFIC_AGENT_LISTENERS_TIMEOUT_SECONDS", default_value_t = 60)]
    pub listeners_timeout_seconds: u64,
    /// When a redirected pod's sidecar dies: `closed` keeps the redirect, so connections are
    /// refused until the new sidecar is configured (no policy is ever bypassed); `open` removes
    /// it, so connections bypass the proxy until then.
    #[arg(long, env = "TRAFFIC_AGENT_SIDECAR_FAILURE", default_value_t = SidecarFailure::Closed)]
    pub sidecar_failure: SidecarFailure,
    /// Manage only pods of this namespace, and only sidecars and redirects that belong to it
    /// (for tests sharing a node; default: every pod of the node, orphans included).
    #[arg(long, env = "TRAFFIC_AGENT_NAMESPACE")]
    pub namespace: Option<String>,
    /// `reportingInstance` of Events (e.g. the agent's pod name); defaults to the node name.
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    /// Namespace of the agent's pod (with --pod-name: where the agent reports a finished drain).
    #[arg(long, env = "POD_NAMESPACE")]
    pub pod_namespace: Option<String>,
    /// The agents' DaemonSet as <namespace>/<name>. When it carries `traffic.agent.drain=true`
    /// (set by `traffic-agent uninstall`), the agent removes everything it made on this node.
    #[arg(long, env = "TRAFFIC_AGENT_DAEMONSET")]
    pub daemonset: Option<DaemonSetRef>,
    #[command(flatten)]
    pub xds: crate::xds_args::XdsAuthArgs,
}

#[derive(Debug, Args)]
pub struct UninstallArgs {
    /// The agents' DaemonSet as <namespace>/<name>.
    #[arg(long, env = "TRAFFIC_AGENT_DAEMONSET")]
    pub daemonset: DaemonSetRef,
    /// Give up (exit 1) when the nodes are not drained within this many seconds.
    #[arg(long, default_value_t = 240)]
    pub timeout_seconds: u64,
}

#[derive(Debug, Args)]
pub struct ProxiesArgs {
    #[command(flatten)]
    pub redirect: RedirectArgs,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    /// Print JSON rows instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// A unique prefix of the sidecar's container id.
    pub id_prefix: String,
    /// Keep streaming until the sidecar stops.
    #[arg(short, long)]
    pub follow: bool,
    /// Only the last N lines.
    #[arg(long)]
    pub tail: Option<usize>,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// A unique prefix of the sidecar's container id.
    pub id_prefix: String,
    /// The command and its arguments (after `--`).
    #[arg(last = true, required = true)]
    pub cmd: Vec<String>,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

/// The redirector for `mode`, `auto` asking the probe.
pub fn redirector(mode: RedirectMode) -> anyhow::Result<Arc<dyn Redirector>> {
    let report = probe::probe();
    let decision = probe::decide(&report);
    let mode = match mode {
        RedirectMode::Auto => decision
            .mode
            .with_context(|| format!("no redirect datapath works on this node: {}", decision.reason))?,
        RedirectMode::Ebpf => Mode::Ebpf,
        RedirectMode::Iptables => Mode::Iptables,
    };
    info!(%mode, reason = %decision.reason, "redirect mode");
    Ok(match mode {
        Mode::Ebpf => Arc::new(EbpfRedirector::with_defaults().context("cannot load the eBPF redirector")?),
        Mode::Iptables => {
            // The decision names a flavour only when it chose iptables itself.
            let flavour = decision
                .iptables_flavour
                .or_else(|| report.iptables.iter().find(|f| f.check.ok()).map(|f| f.flavour))
                .context("iptables mode requested but no working iptables flavour was found")?;
            Arc::new(
                IptablesRedirector::new(flavour, DEFAULT_STATE_DIR)
                    .context("cannot set up the iptables redirector")?,
            )
        }
    })
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    info!(config = ?args, "starting traffic-agent");
    let mut bootstrap = BootstrapOptions::new(args.control_plane.clone());
    bootstrap.api_type = args.ads_api;
    bootstrap.admin_port = args.envoy_admin_port;
    // Validate the address now rather than at the first sidecar.
    traffic_sidecar::bootstrap::render(
        &traffic_sidecar::PodRef {
            uid: "x".into(),
            namespace: "x".into(),
            name: "x".into(),
        },
        &bootstrap,
    )
    .context("--control-plane")?;
    let redirect_mode = args.redirect.redirect_mode;
    let redirector = tokio::task::spawn_blocking(move || redirector(redirect_mode)).await??;
    let mode = redirector.mode();
    // A previous agent in the other mode may have left redirects: never redirect a pod twice.
    match tokio::task::spawn_blocking(move || {
        drain::remove_other_mode(mode, Path::new(DEFAULT_PIN_ROOT), Path::new(DEFAULT_STATE_DIR))
    })
    .await?
    {
        Ok(0) => {}
        Ok(n) => info!(removed = n, "removed redirect state of the other mode"),
        Err(error) => warn!(%error, "cannot remove redirect state of the other mode"),
    }
    let client = kube::Client::try_default()
        .await
        .context("cannot build a Kubernetes client (in-cluster service account or KUBECONFIG)")?;
    let runtime_version = node_runtime_version(&client, &args.node_name).await;
    let ready_timeout = Duration::from_secs(args.ready_timeout_seconds);
    let runtime = Arc::new(args.runtime.connect(runtime_version, Some(ready_timeout)).await?);

    let mut registry = prometheus_client::registry::Registry::default();
    let agent_metrics = AgentMetrics::register(&mut registry);
    let event_metrics = EventMetrics::register(&mut registry);
    let (events, _events_task) = KubeEvents::spawn(
        client.clone(),
        EventsConfig {
            component: "traffic-agent".into(),
            instance: args.pod_name.clone().unwrap_or_else(|| args.node_name.clone()),
            ..EventsConfig::default()
        },
        event_metrics,
    );
    let events = Arc::new(events);
    let tokens = args
        .xds
        .tokens(&mut bootstrap, &client, events.clone(), args.namespace.clone())?;
    if let Some(tokens) = &tokens {
        info!(dir = %args.xds.xds_token_dir.display(), "sidecars present ServiceAccount tokens to the control plane");
        tokio::spawn(tokens.clone().run());
    }
    let xds_ca_file = args.xds.tls(&args.control_plane);
    let registry = Arc::new(registry);
    let addr = args.metrics_addr;
    let http = tokio::spawn(async move { traffic_metrics_http::serve(addr, registry).await });
    info!(%addr, "serving /metrics and /healthz");

    let applier = Arc::new(Applier {
        runtime,
        redirector,
        annotator: Arc::new(KubeAnnotator {
            client: client.clone(),
        }),
        events,
        metrics: agent_metrics,
        listener_wait: ListenerWait {
            admin_port: bootstrap.admin_port,
            timeout: Duration::from_secs(args.listeners_timeout_seconds),
            ..ListenerWait::default()
        },
        template: SidecarTemplate {
            image: args.envoy_image.clone(),
            bootstrap,
            xds_ca_file,
        },
        admin: Arc::new(NetnsAdmin::default()),
        sidecar_failure: args.sidecar_failure,
        concurrency: args.concurrency,
        namespace: args.namespace.clone(),
        tokens,
    });
    let config = ControllerConfig {
        node_name: args.node_name.clone(),
        namespace: args.namespace.clone(),
        resync: Duration::from_secs(args.resync_seconds.max(1)),
        debounce: Duration::from_millis(200),
        sync_timeout: Duration::from_secs(60),
        drain: args.daemonset.clone().map(|daemonset| DrainConfig {
            daemonset,
            own_pod: args.pod_namespace.clone().zip(args.pod_name.clone()),
            pin_root: DEFAULT_PIN_ROOT.into(),
            iptables_state: DEFAULT_STATE_DIR.into(),
        }),
    };
    // As PID 1 of its container the agent would ignore SIGTERM (no default action for PID 1) and
    // hold a rollout for the whole grace period until the SIGKILL.
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot handle SIGTERM")?;
    tokio::select! {
        r = watch::run(client, applier, config) => r.context("controller stopped")?,
        r = http => { r?.context("metrics endpoint failed")?; }
        _ = sigterm.recv() => info!("terminated; sidecars and redirects stay in place for the next agent"),
        _ = tokio::signal::ctrl_c() => info!("interrupted; sidecars and redirects stay in place for the next agent"),
    }
    Ok(())
}

pub async fn proxies(args: ProxiesArgs) -> anyhow::Result<()> {
    let runtime = args.runtime.connect(None, None).await?;
    let mut rows = runtime.proxies().await?;
    let mode = args.redirect.redirect_mode;
    match tokio::task::spawn_blocking(move || redirector(mode).and_then(|r| Ok(r.list()?))).await? {
        Ok(redirected) => {
            for row in &mut rows {
                row.redirect = redirected
                    .iter()
                    .find(|r| r.key.as_str() == row.pod_uid)
                    .map(|r| r.mode.to_string());
            }
        }
        Err(error) => warn!(%error, "cannot read the redirect state; REDIRECT column left empty"),
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print!("{}", operator::table(&rows));
    }
    Ok(())
}

pub async fn logs(args: LogsArgs) -> anyhow::Result<()> {
    let runtime = args.runtime.connect(None, None).await?;
    let mut out = tokio::io::stdout();
    let mut err = tokio::io::stderr();
    runtime
        .logs(&args.id_prefix, args.follow, args.tail, &mut out, &mut err)
        .await?;
    Ok(())
}

pub async fn exec(args: ExecArgs) -> anyhow::Result<i64> {
    let runtime = args.runtime.connect(None, None).await?;
    let mut out = tokio::io::stdout();
    let mut err = tokio::io::stderr();
    Ok(runtime
        .exec(&args.id_prefix, &args.cmd, &mut out, &mut err)
        .await?)
}

/// Tells every agent to drain its node and waits until all have (the chart's pre-delete hook).
pub async fn uninstall(args: UninstallArgs) -> anyhow::Result<()> {
    use k8s_openapi::api::apps::v1::DaemonSet;
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::{ListParams, Patch, PatchParams};
    use kube::Api;

    let client = kube::Client::try_default()
        .await
        .context("cannot build a Kubernetes client (in-cluster service account or KUBECONFIG)")?;
    let ds = &args.daemonset;
    let daemon_sets: Api<DaemonSet> = Api::namespaced(client.clone(), &ds.namespace);
    let patch = serde_json::json!({"metadata": {"annotations": {drain::DRAIN_ANNOTATION: "true"}}});
    let set = match daemon_sets
        .patch(&ds.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(set) => set,
        Err(kube::Error::Api(s)) if s.code == 404 => {
            println!("daemonset {ds} not found: no agent to drain");
            return Ok(());
        }
        Err(e) => return Err(e).with_context(|| format!("cannot annotate daemonset {ds}")),
    };
    let selector = set
        .spec
        .as_ref()
        .and_then(|s| s.selector.match_labels.as_ref())
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        })
        .filter(|s| !s.is_empty())
        .with_context(|| format!("daemonset {ds} has no matchLabels selector"))?;
    println!(
        "asked the agents of {ds} to drain their nodes; waiting (up to {} s)",
        args.timeout_seconds
    );
    let agents: Api<Pod> = Api::namespaced(client.clone(), &ds.namespace);
    let all: Api<Pod> = Api::all(client);
    let deadline = std::time::Instant::now() + Duration::from_secs(args.timeout_seconds);
    loop {
        let agent_pods = agents.list(&ListParams::default().labels(&selector)).await?.items;
        let pods = all.list(&ListParams::default()).await?.items;
        let progress = drain::progress(&agent_pods, &pods);
        if progress.done() {
            println!(
                "drained: {} agent(s) report their nodes clean, no pod is annotated",
                agent_pods.len()
            );
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!(
                "not drained after {} s: agents pending {:?}, pods still annotated {:?}",
                args.timeout_seconds,
                progress.agents_pending,
                progress.pods_annotated
            );
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
