//! The agent's Prometheus metrics: one struct, registered under the `traffic_agent` prefix in the
//! process's one registry (served with `/healthz` by `traffic_metrics_http`).

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
    /// From "sidecar ready" to "its listeners arrived" (first LDS update accepted).
    pub listener_wait_seconds: Histogram,
    /// Sidecars whose listeners did not arrive in time (or whose admin stopped answering).
    pub listener_wait_failures: Counter,
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
            listener_wait_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
            listener_wait_failures: Counter::default(),
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
        r.register(
            "listener_wait_seconds",
            "Time from a sidecar being ready to its listeners having arrived, before it is redirected to",
            m.listener_wait_seconds.clone(),
        );
        r.register(
            "listener_wait_failures",
            "Sidecars whose listeners did not arrive within the timeout (the pod is not redirected to them)",
            m.listener_wait_failures.clone(),
        );
        m
    }
}
