//! CDS, the Service clusters: one cluster per Service port (and per DestinationRule subset and
//! port), its policy the routing model's ([`crate::routing::RoutingModel::cluster_policy`]: the
//! DestinationRule's over the labels', decided in [`crate::routing::merge`]), rendered by
//! `clusters::service_cluster`.

use envoy_types::pb::envoy::config::cluster::v3::Cluster;

use super::clusters::service_cluster;
use super::context::{PortCtx, SvcCtx};
use crate::routing::{RoutingModel, ServiceKey};

/// `<port>|<namespace>|<service>|<subset>`.
pub fn subset_cluster_name(base: &str, subset: &str) -> String {
    format!("{base}|{subset}")
}

/// The cluster of Service port `p` (`subset`: one subset of it, named `name`).
pub(super) fn port_cluster(
    routing: &RoutingModel,
    s: &SvcCtx<'_>,
    p: &PortCtx<'_>,
    subset: Option<(&str, &str)>,
) -> Cluster {
    let key = ServiceKey::new(&s.svc.namespace, &s.svc.name);
    let policy = routing.cluster_policy(&key, p.port.port, subset.map(|(s, _)| s));
    let name = subset.map_or(p.cluster.as_str(), |(_, name)| name);
    service_cluster(name, &policy)
}
