//! CDS: one EDS cluster per service port (label policy: load balancing, circuit breakers, connect
//! timeout), and the fixed clusters (`admin`, `zipkin`, `blackhole`, `passthrough`).

use std::net::IpAddr;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::{
    circuit_breakers::Thresholds, cluster, CircuitBreakers, Cluster,
};
use envoy_types::pb::envoy::config::core::v3::HttpProtocolOptions as CoreHttpProtocolOptions;
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, LocalityLbEndpoints};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{http_protocol_options, HttpProtocolOptions};
use traffic_labels::{ClusterPolicy, LbPolicy};

use super::endpoints::lb_endpoint;
use super::{Collector, ADMIN_CLUSTER, BLACKHOLE_CLUSTER, PASSTHROUGH_CLUSTER, ZIPKIN_CLUSTER};
use crate::envoy::{self, names};

pub(super) fn service_cluster(name: &str, policy: &ClusterPolicy) -> Cluster {
    let hashing = policy.hash_cookie_name.is_some() || policy.hash_header_name.is_some();
    let lb = match (policy.lb_policy.unwrap_or_default(), hashing) {
        (LbPolicy::Maglev, _) => cluster::LbPolicy::Maglev,
        (LbPolicy::RingHash, _) | (_, true) => cluster::LbPolicy::RingHash,
        (LbPolicy::RoundRobin, false) => cluster::LbPolicy::RoundRobin,
        (LbPolicy::LeastRequest, false) => cluster::LbPolicy::LeastRequest,
        (LbPolicy::Random, false) => cluster::LbPolicy::Random,
    };
    let nonzero = |v: Option<u32>| v.filter(|n| *n > 0).map(envoy::u32_value);
    let thresholds = Thresholds {
        max_connections: nonzero(policy.connection_max),
        max_pending_requests: nonzero(policy.request_max_pending),
        max_requests: nonzero(policy.request_max),
        max_retries: nonzero(policy.retries_max),
        ..Default::default()
    };
    let circuit_breakers = (thresholds != Thresholds::default()).then(|| CircuitBreakers {
        thresholds: vec![thresholds],
        ..Default::default()
    });
    let protocol = http_protocol_options(None);
    Cluster {
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
            policy
                .connection_timeout
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
    }
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
