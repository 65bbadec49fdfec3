//! EDS: the endpoints of a service port, grouped by locality and weighted.

use std::collections::BTreeMap;
use std::net::IpAddr;

use envoy_types::pb::envoy::config::core::v3::Locality;
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint, ClusterLoadAssignment, Endpoint as PbEndpoint, LbEndpoint, LocalityLbEndpoints,
};

use super::context::{Ctx, PortCtx, SvcCtx};
use crate::envoy;
use crate::model::Pod;

pub(super) fn lb_endpoint(host: &str, port: u16, weight: Option<u32>) -> LbEndpoint {
    LbEndpoint {
        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(PbEndpoint {
            address: Some(envoy::socket_address(host, port)),
            ..Default::default()
        })),
        load_balancing_weight: weight.map(envoy::u32_value),
        ..Default::default()
    }
}

/// Endpoints of one service port, grouped by locality (zone, node), weighted; weight-0 pods are
/// left out (Envoy rejects weight 0). Locality weights are the sum of their endpoints' weights
/// (gRPC's xDS client requires them). `local`: the pod whose sidecar this is for, which reaches
/// itself on 127.0.0.1.
pub(super) fn load_assignment(
    ctx: &Ctx<'_>,
    s: &SvcCtx<'_>,
    p: &PortCtx<'_>,
    local: Option<&Pod>,
) -> ClusterLoadAssignment {
    assignment(ctx, s, p, local, &p.cluster, None)
}

/// The endpoints of subset cluster `name`: those of the service port whose pods carry every one
/// of `labels`.
pub(super) fn subset_load_assignment(
    ctx: &Ctx<'_>,
    s: &SvcCtx<'_>,
    p: &PortCtx<'_>,
    name: &str,
    labels: &BTreeMap<String, String>,
) -> ClusterLoadAssignment {
    assignment(ctx, s, p, None, name, Some(labels))
}

fn assignment(
    ctx: &Ctx<'_>,
    s: &SvcCtx<'_>,
    p: &PortCtx<'_>,
    local: Option<&Pod>,
    name: &str,
    subset: Option<&BTreeMap<String, String>>,
) -> ClusterLoadAssignment {
    let mut by_locality: BTreeMap<(String, String), Vec<LbEndpoint>> = BTreeMap::new();
    let mut weights: BTreeMap<(String, String), u32> = BTreeMap::new();
    let in_subset =
        |pod: &Pod| subset.is_none_or(|labels| labels.iter().all(|(k, v)| pod.labels.get(k) == Some(v)));
    let pods = s.pods.iter().copied().filter(|pod| in_subset(pod));
    for ep in crate::model::endpoints_of(pods, p.port) {
        let weight = ctx
            .pod_ctx(ep.pod)
            .map(|pc| pc.weight)
            .unwrap_or(traffic_labels::defaults::ENDPOINT_WEIGHT);
        if weight == 0 {
            continue;
        }
        let is_local = local.is_some_and(|l| std::ptr::eq(l, ep.pod));
        let host = if is_local {
            match ep.ip {
                IpAddr::V4(_) => "127.0.0.1".to_string(),
                IpAddr::V6(_) => "::1".to_string(),
            }
        } else {
            ep.ip.to_string()
        };
        let key = (
            ep.pod.zone.clone().unwrap_or_default(),
            ep.pod.node.clone().unwrap_or_default(),
        );
        *weights.entry(key.clone()).or_default() += u32::from(weight);
        by_locality
            .entry(key)
            .or_default()
            .push(lb_endpoint(&host, ep.port, Some(u32::from(weight))));
    }
    ClusterLoadAssignment {
        cluster_name: name.to_string(),
        endpoints: by_locality
            .into_iter()
            .map(|(key, lb_endpoints)| LocalityLbEndpoints {
                load_balancing_weight: weights.get(&key).copied().map(envoy::u32_value),
                locality: Some(Locality {
                    region: String::new(),
                    zone: key.0,
                    sub_zone: key.1,
                }),
                lb_endpoints,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}
