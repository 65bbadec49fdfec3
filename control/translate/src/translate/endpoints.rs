//! EDS: the endpoints of a service port, grouped by locality and weighted.
//!
//! Weights must hold for every xDS client we serve, not just Envoy. Envoy honours
//! `LbEndpoint.load_balancing_weight` across all endpoints of a cluster (we do not set
//! `locality_weighted_lb_config`, so locality weights do not change Envoy's choice). gRPC's xDS
//! clients (grpcio, grpc-java/go, @grpc/grpc-js-xds) do not: their `round_robin` /
//! `least_request` child ignores endpoint weights, and only the *locality* weights are applied
//! (`weighted_target` / `xds_wrr_locality` picks a locality by `load_balancing_weight`, then
//! round-robins inside it). So one locality holding an 80 and a 20 endpoint splits 50/50 for gRPC.
//!
//! Hence: within a (zone, node) locality whose endpoints carry different weights, endpoints are
//! grouped by weight into sub-localities (`sub_zone` `<node>~w<weight>`), each weighted by the sum
//! of its endpoints' weights and holding endpoints of equal weight only. Picking a locality by
//! weight and then any endpoint in it with equal probability is exactly the per-endpoint split,
//! so Envoy (endpoint weights) and gRPC (locality weights) split the same way. A locality whose
//! endpoints all weigh the same stays one locality named as before.
//!
//! Not for hash-based clusters (ring hash, Maglev): gRPC's `ring_hash` weighs each endpoint by
//! locality weight × endpoint weight (gRFC A42), which is proportional to the endpoint weight
//! only when the endpoints share one locality, so those keep one locality per (zone, node).
//!
//! Weighted routes (Istio `route[].weight` over DestinationRule subsets, `weighted_clusters` in
//! RDS) need none of this: Envoy and gRPC (gRFC A28) both split requests across the clusters.

use std::collections::BTreeMap;
use std::net::IpAddr;

use envoy_types::pb::envoy::config::core::v3::Locality;
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint, ClusterLoadAssignment, Endpoint as PbEndpoint, LbEndpoint, LocalityLbEndpoints,
};

use super::context::{Ctx, PortCtx, SvcCtx};
use crate::envoy;
use crate::model::Pod;

/// Whether endpoints of different weights go into localities of their own (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Split {
    /// Round robin, least request, random: group by weight so gRPC honours the weights.
    ByWeight,
    /// Ring hash, Maglev: one locality per (zone, node).
    No,
}

impl Split {
    /// The split for a cluster with `lb_policy` (`envoy.config.cluster.v3.Cluster.LbPolicy`).
    pub(super) fn for_lb_policy(lb_policy: i32) -> Self {
        use envoy_types::pb::envoy::config::cluster::v3::cluster::LbPolicy;
        if lb_policy == LbPolicy::RingHash as i32 || lb_policy == LbPolicy::Maglev as i32 {
            Split::No
        } else {
            Split::ByWeight
        }
    }
}

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
    split: Split,
) -> ClusterLoadAssignment {
    assignment(ctx, s, p, local, &p.cluster, None, split)
}

/// The endpoints of subset cluster `name`: those of the service port whose pods carry every one
/// of `labels`.
pub(super) fn subset_load_assignment(
    ctx: &Ctx<'_>,
    s: &SvcCtx<'_>,
    p: &PortCtx<'_>,
    name: &str,
    labels: &BTreeMap<String, String>,
    split: Split,
) -> ClusterLoadAssignment {
    assignment(ctx, s, p, None, name, Some(labels), split)
}

fn assignment(
    ctx: &Ctx<'_>,
    s: &SvcCtx<'_>,
    p: &PortCtx<'_>,
    local: Option<&Pod>,
    name: &str,
    subset: Option<&BTreeMap<String, String>>,
    split: Split,
) -> ClusterLoadAssignment {
    let in_subset =
        |pod: &Pod| subset.is_none_or(|labels| labels.iter().all(|(k, v)| pod.labels.get(k) == Some(v)));
    let pods = s.pods.iter().copied().filter(|pod| in_subset(pod));
    let mut endpoints = Vec::new();
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
        endpoints.push(Weighted {
            zone: ep.pod.zone.clone().unwrap_or_default(),
            node: ep.pod.node.clone().unwrap_or_default(),
            weight: u32::from(weight),
            endpoint: lb_endpoint(&host, ep.port, Some(u32::from(weight))),
        });
    }
    ClusterLoadAssignment {
        cluster_name: name.to_string(),
        endpoints: localities(endpoints, split),
        ..Default::default()
    }
}

/// One endpoint with where it runs and its weight (> 0).
struct Weighted {
    zone: String,
    node: String,
    weight: u32,
    endpoint: LbEndpoint,
}

/// Group endpoints into weighted localities (see the module doc), in a deterministic order.
fn localities(endpoints: Vec<Weighted>, split: Split) -> Vec<LocalityLbEndpoints> {
    // (zone, node) -> (weight, endpoint) in model order.
    let mut by_place: BTreeMap<(String, String), Vec<(u32, LbEndpoint)>> = BTreeMap::new();
    for w in endpoints {
        by_place
            .entry((w.zone, w.node))
            .or_default()
            .push((w.weight, w.endpoint));
    }
    let locality =
        |zone: &str, sub_zone: String, weight: u32, lb_endpoints: Vec<LbEndpoint>| LocalityLbEndpoints {
            load_balancing_weight: Some(envoy::u32_value(weight)),
            locality: Some(Locality {
                region: String::new(),
                zone: zone.to_string(),
                sub_zone,
            }),
            lb_endpoints,
            ..Default::default()
        };
    let mut out = Vec::new();
    for ((zone, node), eps) in by_place {
        let uniform = eps.iter().all(|(w, _)| *w == eps[0].0);
        if split == Split::No || uniform {
            let total = eps.iter().map(|(w, _)| *w).fold(0u32, u32::saturating_add);
            out.push(locality(
                &zone,
                node,
                total,
                eps.into_iter().map(|(_, e)| e).collect(),
            ));
            continue;
        }
        let mut by_weight: BTreeMap<u32, Vec<LbEndpoint>> = BTreeMap::new();
        for (w, e) in eps {
            by_weight.entry(w).or_default().push(e);
        }
        // Heaviest first, so the usual "most traffic" locality leads the list.
        for (weight, eps) in by_weight.into_iter().rev() {
            let total = group_weight(weight, eps.len());
            out.push(locality(&zone, format!("{node}~w{weight}"), total, eps));
        }
    }
    out
}

/// `count` endpoints of `weight` each (weights are at most 128, so this cannot overflow for
/// any realistic count; saturate anyway).
fn group_weight(weight: u32, count: usize) -> u32 {
    weight.saturating_mul(u32::try_from(count).unwrap_or(u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(zone: &str, node: &str, ip: &str, weight: u32) -> Weighted {
        Weighted {
            zone: zone.into(),
            node: node.into(),
            weight,
            endpoint: lb_endpoint(ip, 80, Some(weight)),
        }
    }

    /// (zone, sub_zone, locality weight, [(ip, endpoint weight)]).
    type Shape = (String, String, u32, Vec<(String, u32)>);

    fn shape(ls: &[LocalityLbEndpoints]) -> Vec<Shape> {
        ls.iter()
            .map(|l| {
                let loc = l.locality.clone().unwrap_or_default();
                let eps = l
                    .lb_endpoints
                    .iter()
                    .map(|e| {
                        let Some(lb_endpoint::HostIdentifier::Endpoint(pe)) = &e.host_identifier else {
                            panic!("no endpoint")
                        };
                        let Some(envoy_types::pb::envoy::config::core::v3::address::Address::SocketAddress(
                            sa,
                        )) = pe.address.as_ref().and_then(|a| a.address.clone())
                        else {
                            panic!("no socket address")
                        };
                        (sa.address, e.load_balancing_weight.map(|w| w.value).unwrap_or(1))
                    })
                    .collect();
                (
                    loc.zone,
                    loc.sub_zone,
                    l.load_balancing_weight.map(|w| w.value).unwrap_or(0),
                    eps,
                )
            })
            .collect()
    }

    fn s(x: &str) -> String {
        x.to_string()
    }

    #[test]
    fn equal_weights_on_one_node_stay_one_locality() {
        let ls = localities(
            vec![ep("z", "n1", "10.0.0.1", 100), ep("z", "n1", "10.0.0.2", 100)],
            Split::ByWeight,
        );
        assert_eq!(
            shape(&ls),
            [(
                s("z"),
                s("n1"),
                200,
                vec![(s("10.0.0.1"), 100), (s("10.0.0.2"), 100)]
            )]
        );
    }

    #[test]
    fn different_weights_on_one_node_become_weighted_sub_localities() {
        let ls = localities(
            vec![
                ep("", "", "10.0.0.1", 80),
                ep("", "", "10.0.0.2", 20),
                ep("", "", "10.0.0.3", 20),
            ],
            Split::ByWeight,
        );
        assert_eq!(
            shape(&ls),
            [
                (s(""), s("~w80"), 80, vec![(s("10.0.0.1"), 80)]),
                (
                    s(""),
                    s("~w20"),
                    40,
                    vec![(s("10.0.0.2"), 20), (s("10.0.0.3"), 20)]
                ),
            ]
        );
    }

    #[test]
    fn each_locality_share_times_the_round_robin_share_is_the_endpoint_share() {
        // Whatever the mix, picking a locality by weight and then an endpoint uniformly in it
        // gives each endpoint weight / total: what Envoy's endpoint weights give.
        let eps = [
            ("z1", "a", 128),
            ("z1", "a", 1),
            ("z1", "a", 1),
            ("z1", "b", 7),
            ("z2", "c", 50),
            ("z2", "c", 7),
        ];
        let ls = localities(
            eps.iter()
                .enumerate()
                .map(|(i, (z, n, w))| ep(z, n, &format!("10.0.0.{i}"), *w))
                .collect(),
            Split::ByWeight,
        );
        let total: u32 = eps.iter().map(|e| e.2).sum();
        let loc_total: u32 = ls
            .iter()
            .map(|l| l.load_balancing_weight.expect("weight").value)
            .sum();
        assert_eq!(loc_total, total);
        for l in &ls {
            let lw = f64::from(l.load_balancing_weight.expect("weight").value) / f64::from(loc_total);
            let n = l.lb_endpoints.len() as f64;
            for e in &l.lb_endpoints {
                let want = f64::from(e.load_balancing_weight.expect("weight").value) / f64::from(total);
                assert!((lw / n - want).abs() < 1e-12, "{l:?}");
            }
        }
        // Distinct localities (gRPC keys its children by locality).
        let mut keys: Vec<_> = shape(&ls).into_iter().map(|x| (x.0, x.1)).collect();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), ls.len());
    }

    #[test]
    fn hash_clusters_keep_one_locality_per_node() {
        let ls = localities(
            vec![ep("z", "n1", "10.0.0.1", 80), ep("z", "n1", "10.0.0.2", 20)],
            Split::No,
        );
        assert_eq!(
            shape(&ls),
            [(
                s("z"),
                s("n1"),
                100,
                vec![(s("10.0.0.1"), 80), (s("10.0.0.2"), 20)]
            )]
        );
        use envoy_types::pb::envoy::config::cluster::v3::cluster::LbPolicy;
        assert_eq!(Split::for_lb_policy(LbPolicy::RingHash as i32), Split::No);
        assert_eq!(Split::for_lb_policy(LbPolicy::Maglev as i32), Split::No);
        assert_eq!(Split::for_lb_policy(LbPolicy::RoundRobin as i32), Split::ByWeight);
        assert_eq!(
            Split::for_lb_policy(LbPolicy::LeastRequest as i32),
            Split::ByWeight
        );
    }
}
