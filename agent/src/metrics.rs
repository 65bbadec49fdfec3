//! The agent's Prometheus metrics (one struct, registered under the `traffic_agent` prefix) and
//! the `/metrics` + `/healthz` HTTP endpoint.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModeLabels {
    pub mode: String,
}

/// Every metric of the agent.
#[derive(Debug, Clone)]
pub struct AgentMetrics {
    /// Redirected pods on this node, by redirect mode.
    pub managed_pods: Family<ModeLabels, Gauge>,
    pub sidecar_restarts: Counter,
    pub sidecar_errors: Counter,
    pub redirect_errors: Counter,
    pub annotation_errors: Counter,
    /// Rounds skipped because the runtime or the redirector could not be listed.
    pub observe_errors: Counter,
    pub reconcile_seconds: Histogram,
}

impl AgentMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = AgentMetrics {
            managed_pods: Family::default(),
            sidecar_restarts: Counter::default(),
            sidecar_errors: Counter::default(),
            redirect_errors: Counter::default(),
            annotation_errors: Counter::default(),
            observe_errors: Counter::default(),
            reconcile_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
        };
        let r = registry.sub_registry_with_prefix("traffic_agent");
        r.register(
            "managed_pods",
            "Pods whose outbound TCP is redirected to their sidecar, by mode",
            m.managed_pods.clone(),
        );
        r.register(
            "sidecar_restarts",
            "Sidecars started again after the previous one exited",
            m.sidecar_restarts.clone(),
        );
        r.register(
            "sidecar_errors",
            "Failed sidecar starts and removals",
            m.sidecar_errors.clone(),
        );
        r.register(
            "redirect_errors",
            "Failed redirect enables and disables",
            m.redirect_errors.clone(),
        );
        r.register(
            "annotation_errors",
            "Failed pod annotation patches",
            m.annotation_errors.clone(),
        );
        r.register(
            "observe_errors",
            "Reconcile rounds skipped: the runtime or the redirector could not be listed",
            m.observe_errors.clone(),
        );
        r.register(
            "reconcile_seconds",
            "Duration of one reconcile round (observe, plan, apply)",
            m.reconcile_seconds.clone(),
        );
        m
    }
}

async fn metrics(State(registry): State<Arc<Registry>>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        ),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            String::new(),
        ),
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// `/metrics` and `/healthz`.
pub fn router(registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .with_state(registry)
}

/// Serves until the listener fails.
pub async fn serve(addr: SocketAddr, registry: Arc<Registry>) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, router(registry)).await
}
