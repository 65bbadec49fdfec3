//! CDS, the routing model's part: a [`DestinationPolicy`](crate::routing::DestinationPolicy)
//! (Istio DestinationRule) applied to a Service's cluster, and one extra cluster per subset.
//!
//! | model (Istio) | Envoy |
//! |---|---|
//! | `LoadBalancer::{RoundRobin, LeastRequest, Random}` | `Cluster.lb_policy` |
//! | `LoadBalancer::Passthrough` | `ORIGINAL_DST` cluster, `CLUSTER_PROVIDED` |
//! | `LoadBalancer::ConsistentHash` | `RING_HASH` (+ the route's `hash_policy`, see `mesh_routes`) |
//! | `max_connections` / `max_pending_requests` / `max_requests` / `max_retries` | `circuit_breakers.thresholds[0]`; unset ones 2^32-1 (Istio's defaults), or the label value |
//! | `connect_timeout` | `Cluster.connect_timeout` |
//! | `max_requests_per_connection` | `HttpProtocolOptions.common_http_protocol_options.max_requests_per_connection` |
//! | `OutlierDetection` | `Cluster.outlier_detection` (`enforcing_* 100` for the given counts, `enforcing_success_rate 0`) + `common_lb_config.healthy_panic_threshold` = `min_health_percent` (default 0: panic mode off) |

use envoy_types::pb::envoy::config::cluster::v3::{
    circuit_breakers::Thresholds, cluster, CircuitBreakers, Cluster, OutlierDetection as PbOutlier,
};
use envoy_types::pb::envoy::r#type::v3::Percent as PbPercent;
use traffic_labels::ClusterPolicy as LabelPolicy;

use super::clusters::{http_protocol_options, service_cluster};
use super::context::{Ctx, PortCtx, SvcCtx};
use crate::envoy::{self, names};
use crate::routing::{ClusterPolicy, LoadBalancer};

/// `<port>|<namespace>|<service>|<subset>`.
pub fn subset_cluster_name(base: &str, subset: &str) -> String {
    format!("{base}|{subset}")
}

/// The cluster of Service port `p`: its labels' policy with the DestinationRule's (if any) over it.
pub(super) fn port_cluster(ctx: &Ctx<'_>, s: &SvcCtx<'_>, p: &PortCtx<'_>) -> Cluster {
    let key = crate::routing::ServiceKey::new(&s.svc.namespace, &s.svc.name);
    match ctx.routing.policies.get(&key) {
        Some(dp) => policy_cluster(&p.cluster, &s.settings.cluster, &dp.for_port(p.port.port)),
        None => service_cluster(&p.cluster, &s.settings.cluster),
    }
}

/// The cluster `name` of a Service port: the label policy, then `policy` over it field by field.
pub(super) fn policy_cluster(name: &str, labels: &LabelPolicy, policy: &ClusterPolicy) -> Cluster {
    let mut c = service_cluster(name, labels);
    match &policy.load_balancer {
        None => {}
        Some(LoadBalancer::RoundRobin) => c.lb_policy = cluster::LbPolicy::RoundRobin as i32,
        Some(LoadBalancer::LeastRequest) => c.lb_policy = cluster::LbPolicy::LeastRequest as i32,
        Some(LoadBalancer::Random) => c.lb_policy = cluster::LbPolicy::Random as i32,
        Some(LoadBalancer::ConsistentHash(_)) => c.lb_policy = cluster::LbPolicy::RingHash as i32,
        Some(LoadBalancer::Passthrough) => {
            c.lb_policy = cluster::LbPolicy::ClusterProvided as i32;
            c.cluster_discovery_type = Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::OriginalDst as i32,
            ));
            c.eds_cluster_config = None;
        }
    }

    // Istio sets every circuit breaker threshold it is not given to 2^32-1 (Envoy's own defaults,
    // e.g. 1024 connections, are a surprise at scale); a label value still counts.
    let pool = policy.connection_pool.clone().unwrap_or_default();
    let label = |v: Option<u32>| v.filter(|n| *n > 0);
    let threshold =
        |istio: Option<u32>, label: Option<u32>| Some(envoy::u32_value(istio.or(label).unwrap_or(u32::MAX)));
    c.circuit_breakers = Some(CircuitBreakers {
        thresholds: vec![Thresholds {
            max_connections: threshold(pool.max_connections, label(labels.connection_max)),
            max_pending_requests: threshold(pool.max_pending_requests, label(labels.request_max_pending)),
            max_requests: threshold(pool.max_requests, label(labels.request_max)),
            max_retries: threshold(pool.max_retries, label(labels.retries_max)),
            ..Default::default()
        }],
        ..Default::default()
    });
    if let Some(t) = pool.connect_timeout.filter(|t| !t.is_zero()) {
        c.connect_timeout = Some(envoy::duration(t));
    }
    if let Some(n) = pool.max_requests_per_connection.filter(|n| *n > 0) {
        c.typed_extension_protocol_options = [(
            names::HTTP_PROTOCOL_OPTIONS.to_string(),
            envoy::any(&http_protocol_options(Some(n))),
        )]
        .into_iter()
        .collect();
    }

    if let Some(od) = &policy.outlier_detection {
        let enforcing = |n: Option<u32>| n.map(|n| envoy::u32_value(if n > 0 { 100 } else { 0 }));
        c.outlier_detection = Some(PbOutlier {
            consecutive_5xx: od.consecutive_5xx.map(envoy::u32_value),
            enforcing_consecutive_5xx: enforcing(od.consecutive_5xx),
            consecutive_gateway_failure: od.consecutive_gateway_errors.map(envoy::u32_value),
            enforcing_consecutive_gateway_failure: enforcing(od.consecutive_gateway_errors),
            interval: od.interval.map(envoy::duration),
            base_ejection_time: od.base_ejection_time.map(envoy::duration),
            max_ejection_percent: od.max_ejection_percent.map(envoy::u32_value),
            enforcing_success_rate: Some(envoy::u32_value(0)),
            ..Default::default()
        });
        c.common_lb_config = Some(cluster::CommonLbConfig {
            healthy_panic_threshold: Some(PbPercent {
                value: f64::from(od.min_health_percent.unwrap_or(0)),
            }),
            ..Default::default()
        });
    }
    c
}
