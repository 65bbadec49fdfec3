//! CDS: one EDS cluster per service port rendered from its [`ClusterPolicy`] (labels and
//! DestinationRule merged, see [`crate::routing::merge`]), and the fixed clusters (`admin`,
//! `zipkin`, `blackhole`, `passthrough`).
//!
//! | model | Envoy |
//! |---|---|
//! | `LoadBalancer::{RoundRobin, LeastRequest, Random, Maglev}` (none: round robin) | `Cluster.lb_policy` |
//! | `LoadBalancer::{RingHash, ConsistentHash}` | `RING_HASH` (+ the routes' `hash_policy`, see `mesh_routes`) |
//! | `LoadBalancer::Passthrough` | `ORIGINAL_DST` cluster, `CLUSTER_PROVIDED` |
//! | `max_connections` / `max_pending_requests` / `max_requests` / `max_retries` | `circuit_breakers.thresholds[0]` (none given: no circuit breakers, Envoy's defaults) |
//! | `connect_timeout` | `Cluster.connect_timeout` (default 60 s) |
//! | `max_requests_per_connection` | `HttpProtocolOptions.common_http_protocol_options.max_requests_per_connection` |
//! | `OutlierDetection` | `Cluster.outlier_detection` (`enforcing_* 100` for the given counts, `enforcing_success_rate 0`) + `common_lb_config.healthy_panic_threshold` = `min_health_percent` (default 0: panic mode off) |

use std::net::IpAddr;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::{
    circuit_breakers::Thresholds, cluster, CircuitBreakers, Cluster, OutlierDetection as PbOutlier,
};
use envoy_types::pb::envoy::config::core::v3::HttpProtocolOptions as CoreHttpProtocolOptions;
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, LocalityLbEndpoints};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{http_protocol_options, HttpProtocolOptions};
use envoy_types::pb::envoy::r#type::v3::Percent as PbPercent;

use super::endpoints::lb_endpoint;
use super::{Collector, ADMIN_CLUSTER, BLACKHOLE_CLUSTER, PASSTHROUGH_CLUSTER, ZIPKIN_CLUSTER};
use crate::envoy::{self, names};
use crate::routing::{ClusterPolicy, LoadBalancer};

/// The EDS cluster `name` of a Service port (or subset) with `policy`.
pub(super) fn service_cluster(name: &str, policy: &ClusterPolicy) -> Cluster {
    let lb = match &policy.load_balancer {
        None | Some(LoadBalancer::RoundRobin) => cluster::LbPolicy::RoundRobin,
        Some(LoadBalancer::LeastRequest) => cluster::LbPolicy::LeastRequest,
        Some(LoadBalancer::Random) => cluster::LbPolicy::Random,
        Some(LoadBalancer::RingHash | LoadBalancer::ConsistentHash(_)) => cluster::LbPolicy::RingHash,
        Some(LoadBalancer::Maglev) => cluster::LbPolicy::Maglev,
        Some(LoadBalancer::Passthrough) => cluster::LbPolicy::ClusterProvided,
    };
    let pool = policy.connection_pool.clone().unwrap_or_default();
    let thresholds = Thresholds {
        max_connections: pool.max_connections.map(envoy::u32_value),
        max_pending_requests: pool.max_pending_requests.map(envoy::u32_value),
        max_requests: pool.max_requests.map(envoy::u32_value),
        max_retries: pool.max_retries.map(envoy::u32_value),
        ..Default::default()
    };
    let circuit_breakers = (thresholds != Thresholds::default()).then(|| CircuitBreakers {
        thresholds: vec![thresholds],
        ..Default::default()
    });
    let protocol = http_protocol_options(pool.max_requests_per_connection.filter(|n| *n > 0));
    let mut c = Cluster {
        name: name.to_string(),
        // One entry only, so the encoding stays deterministic.
        typed_extension_protocol_options: [(names::HTTP_PROTOCOL_OPTIONS.to_string(), envoy::any(&protocol))]
            .into_iter()
            .collect(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Eds as i32,
        )),
        eds_cluster_config: Some(cluster::EdsClusterConfig {
            eds_config: Some(envoy::ads()),
            service_name: name.to_string(),
        }),
        connect_timeout: Some(envoy::duration(
            pool.connect_timeout
                .unwrap_or(traffic_labels::defaults::CONNECTION_TIMEOUT),
        )),
        lb_policy: lb as i32,
        // Stats become `cluster.<name>.outbound.*`; Envoy's cluster-name tag extractor takes the
        // text up to the first dot, so Prometheus sees exactly what users of the original know:
        // `envoy_cluster_outbound_upstream_rq_completed{envoy_cluster_name="9080|default|reviews"}`
        // (checked against Envoy 1.39.3).
        alt_stat_name: format!("{name}.outbound"),
        circuit_breakers,
        ..Default::default()
    };
    if policy.load_balancer == Some(LoadBalancer::Passthrough) {
        c.cluster_discovery_type = Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::OriginalDst as i32,
        ));
        c.eds_cluster_config = None;
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

/// Speak to the upstream in the protocol the client used (h2c stays h2c: gRPC keeps working
/// through an `http` port); Envoy's default would downgrade everything to HTTP/1.1.
pub(super) fn http_protocol_options(max_requests_per_connection: Option<u32>) -> HttpProtocolOptions {
    HttpProtocolOptions {
        common_http_protocol_options: max_requests_per_connection.map(|n| CoreHttpProtocolOptions {
            max_requests_per_connection: Some(envoy::u32_value(n)),
            ..Default::default()
        }),
        upstream_protocol_options: Some(
            http_protocol_options::UpstreamProtocolOptions::UseDownstreamProtocolConfig(
                http_protocol_options::UseDownstreamHttpConfig {
                    http_protocol_options: Some(Default::default()),
                    http2_protocol_options: Some(Default::default()),
                    ..Default::default()
                },
            ),
        ),
        ..Default::default()
    }
}

pub(super) fn static_cluster(name: &str, host: &str, port: u16, dns: bool) -> Cluster {
    Cluster {
        name: name.to_string(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(if dns {
            cluster::DiscoveryType::StrictDns as i32
        } else {
            cluster::DiscoveryType::Static as i32
        })),
        connect_timeout: Some(envoy::duration(Duration::from_secs(1))),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: name.to_string(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![lb_endpoint(host, port, None)],
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub(super) fn admin_cluster(admin_port: u16) -> Cluster {
    static_cluster(ADMIN_CLUSTER, "127.0.0.1", admin_port, false)
}

pub(super) fn zipkin_cluster(c: &Collector) -> Cluster {
    let dns = c.host.parse::<IpAddr>().is_err();
    static_cluster(ZIPKIN_CLUSTER, &c.host, c.port, dns)
}

pub(super) fn blackhole_cluster() -> Cluster {
    Cluster {
        name: BLACKHOLE_CLUSTER.to_string(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Static as i32,
        )),
        connect_timeout: Some(envoy::duration(Duration::from_secs(1))),
        ..Default::default()
    }
}

pub(super) fn passthrough_cluster() -> Cluster {
    Cluster {
        name: PASSTHROUGH_CLUSTER.to_string(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::OriginalDst as i32,
        )),
        lb_policy: cluster::LbPolicy::ClusterProvided as i32,
        connect_timeout: Some(envoy::duration(traffic_labels::defaults::CONNECTION_TIMEOUT)),
        ..Default::default()
    }
}
