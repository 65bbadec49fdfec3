//! The routing model's per-destination policy: subsets and cluster policy (load balancing,
//! connection pool, outlier detection), from Istio DestinationRules and from a Service's
//! `traffic.*` labels.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::snapshot::ObjectRef;

/// What a DestinationRule says about one Service (the labels' cluster policy is kept apart, in
/// [`super::RoutingModel::label_policies`]).
#[derive(Debug, Clone, PartialEq)]
pub struct DestinationPolicy {
    pub origin: ObjectRef,
    /// The Service's own cluster(s).
    pub policy: ClusterPolicy,
    /// Port number -> policy replacing `policy` field by field for that port.
    pub ports: BTreeMap<u16, ClusterPolicy>,
    pub subsets: Vec<Subset>,
}

impl DestinationPolicy {
    pub fn subset(&self, name: &str) -> Option<&Subset> {
        self.subsets.iter().find(|s| s.name == name)
    }

    /// The policy of the Service's cluster for `port`.
    pub fn for_port(&self, port: u16) -> ClusterPolicy {
        match self.ports.get(&port) {
            Some(p) => p.clone().or(&self.policy),
            None => self.policy.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Subset {
    /// A DNS label (it is part of cluster names).
    pub name: String,
    /// Pods of the Service with all these labels.
    pub labels: BTreeMap<String, String>,
    /// Replaces the Service's policy field by field (each field whole).
    pub policy: ClusterPolicy,
}

/// A cluster's policy; each field replaces a less specific one whole.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterPolicy {
    pub load_balancer: Option<LoadBalancer>,
    pub connection_pool: Option<ConnectionPool>,
    pub outlier_detection: Option<OutlierDetection>,
}

impl ClusterPolicy {
    /// `self`, with each field it does not set taken from `base`.
    pub fn or(self, base: &ClusterPolicy) -> ClusterPolicy {
        ClusterPolicy {
            load_balancer: self.load_balancer.or_else(|| base.load_balancer.clone()),
            connection_pool: self.connection_pool.or_else(|| base.connection_pool.clone()),
            outlier_detection: self.outlier_detection.or_else(|| base.outlier_detection.clone()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadBalancer {
    RoundRobin,
    LeastRequest,
    Random,
    /// Envoy `ORIGINAL_DST`: connect to the address the caller asked for.
    Passthrough,
    /// Ring hash on this key (Envoy also needs the route's `hash_policy`).
    ConsistentHash(HashKey),
    /// Ring hash on the routes' hash keys (`traffic.lb.policy=ring_hash`, or `traffic.hash.*`).
    RingHash,
    /// Maglev on the routes' hash keys (`traffic.lb.policy=maglev`).
    Maglev,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    Header(String),
    Cookie {
        name: String,
        ttl: Option<Duration>,
        path: Option<String>,
    },
    SourceIp,
    QueryParameter(String),
}

/// Connection pool settings; `None` = Istio's default (thresholds 2^32-1, Envoy's otherwise).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectionPool {
    pub max_connections: Option<u32>,
    /// > 0.
    pub connect_timeout: Option<Duration>,
    pub max_pending_requests: Option<u32>,
    pub max_requests: Option<u32>,
    pub max_requests_per_connection: Option<u32>,
    pub max_retries: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutlierDetection {
    pub consecutive_5xx: Option<u32>,
    pub consecutive_gateway_errors: Option<u32>,
    pub interval: Option<Duration>,
    pub base_ejection_time: Option<Duration>,
    pub max_ejection_percent: Option<u32>,
    /// Envoy's `healthy_panic_threshold`; Istio's default is 0 (panic mode off).
    pub min_health_percent: Option<u32>,
}
