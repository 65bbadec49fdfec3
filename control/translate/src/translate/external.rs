//! ServiceEntry hosts ([`ExternalHost`]): their clusters and endpoints, their outbound filter
//! chains, and the per-port HTTP route configurations whose last virtual host applies the
//! outbound policy to hosts nobody declared.
//!
//! | ServiceEntry | Envoy |
//! |---|---|
//! | `resolution: NONE` | `ORIGINAL_DST` cluster, `CLUSTER_PROVIDED` (the address the caller connected to) |
//! | `resolution: STATIC` + `endpoints` | EDS cluster; endpoints grouped by `locality`, `weight` -> `load_balancing_weight`, `ports[name]` else `targetPort` else the port |
//! | `resolution: DNS` | DNS cluster (`envoy.clusters.dns`, i.e. STRICT_DNS) on the endpoints' names (or the host), `respect_dns_ttl`, `V4_PREFERRED` |
//! | `resolution: DNS_ROUND_ROBIN` | the same with `all_addresses_in_single_endpoint` (LOGICAL_DNS), on the one name |
//! | `HTTP`/`HTTP2`/`GRPC` port P | filter chain on port P (and the `addresses`, if any) -> HCM with RDS `P`: a virtual host per host (`host`, `host:P`), then `*` -> `passthrough` (ALLOW_ANY) or `direct_response 502` (REGISTRY_ONLY) |
//! | `HTTPS`/`TLS` port P | filter chain on port P + `server_names` = host (+ `addresses`) -> tcp_proxy; `tls_inspector` runs on those ports only |
//! | `TCP`/`MONGO` port P | filter chain on port P + `addresses` (none: every address) -> tcp_proxy |
//! | DestinationRule on the host | the same policy and subsets as for a Service; subset endpoints are the entry's endpoints with the subset's labels |

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster};
use envoy_types::pb::envoy::config::core::v3::{CidrRange, Locality};
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, LocalityLbEndpoints};
use envoy_types::pb::envoy::config::listener::v3::{
    listener_filter_chain_match_predicate::{MatchSet, Rule},
    FilterChain, FilterChainMatch, ListenerFilter, ListenerFilterChainMatchPredicate,
};
use envoy_types::pb::envoy::config::route::v3::{
    route, route_action, route_match, DirectResponseAction, Route, RouteAction, RouteConfiguration,
    RouteMatch, VirtualHost,
};
use envoy_types::pb::envoy::extensions::clusters::common::dns::v3::DnsLookupFamily;
use envoy_types::pb::envoy::extensions::clusters::dns::v3::DnsCluster;
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::r#type::v3::Int32Range;
use traffic_labels::Settings;

use super::clusters::service_cluster;
use super::context::{Ctx, SvcCtx};
use super::endpoints::lb_endpoint;
use super::listeners::{
    http_connection_manager, listener_filter, network_filter, tcp_proxy, weighted_tcp_proxy,
};
use super::routes::Side;
use super::{OutboundPolicy, PASSTHROUGH_CLUSTER};
use crate::envoy::{self, names, resource};
use crate::routing::{
    merge, ClusterPolicy, ExternalHost, ExternalPort, ExternalProtocol, LoadBalancer, Resolution,
};
use crate::snapshot::{ObjectRef, Resources};

/// The route configuration of ServiceEntry HTTP port `port` (Istio names it the same way).
pub fn external_route_name(port: u16) -> String {
    port.to_string()
}

/// The cluster of an external host's port (or of one subset: `subset` = its endpoint labels).
pub(super) fn external_cluster(
    name: &str,
    e: &ExternalHost,
    port: &ExternalPort,
    policy: Option<&ClusterPolicy>,
    subset: Option<&BTreeMap<String, String>>,
) -> Cluster {
    // No labels: the entry's DestinationRule alone (see `merge::cluster_policy`).
    let mut c = service_cluster(name, &merge::cluster_policy(policy, &ClusterPolicy::default()));
    let passthrough_lb = policy.is_some_and(|p| p.load_balancer == Some(LoadBalancer::Passthrough));
    // Envoy's DNS cluster extension (the `respect_dns_ttl` / `dns_lookup_family` fields of
    // `Cluster` are deprecated); `all_addresses_in_single_endpoint` is LOGICAL_DNS.
    let dns = |c: &mut Cluster, logical: bool| {
        let config = DnsCluster {
            respect_dns_ttl: true,
            dns_lookup_family: DnsLookupFamily::V4Preferred as i32,
            all_addresses_in_single_endpoint: logical,
            ..Default::default()
        };
        c.cluster_discovery_type = Some(cluster::ClusterDiscoveryType::ClusterType(
            cluster::CustomClusterType {
                name: names::DNS_CLUSTER.to_string(),
                typed_config: Some(envoy::any(&config)),
            },
        ));
        c.eds_cluster_config = None;
        let mut cla = assignment(name, e, port, subset);
        if logical {
            // One name only.
            cla.endpoints.truncate(1);
            if let Some(l) = cla.endpoints.first_mut() {
                l.lb_endpoints.truncate(1);
            }
        }
        c.load_assignment = Some(cla);
    };
    match e.resolution {
        _ if passthrough_lb => {} // service_cluster made it ORIGINAL_DST already
        Resolution::None => {
            c.cluster_discovery_type = Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::OriginalDst as i32,
            ));
            c.lb_policy = cluster::LbPolicy::ClusterProvided as i32;
            c.eds_cluster_config = None;
        }
        Resolution::Static => {} // EDS, see `assignment`
        Resolution::Dns => dns(&mut c, false),
        Resolution::DnsRoundRobin => {
            let has_one = !assignment(name, e, port, subset).endpoints.is_empty();
            if has_one {
                dns(&mut c, true);
            } else {
                // A subset no endpoint is in: a logical DNS cluster needs one name, so a cluster without
                // hosts (requests get 503 UH, as for an empty Service subset).
                c.cluster_discovery_type = Some(cluster::ClusterDiscoveryType::Type(
                    cluster::DiscoveryType::Static as i32,
                ));
                c.eds_cluster_config = None;
            }
        }
    }
    c
}

/// Whether the cluster of `e` gets its endpoints over EDS.
pub(super) fn uses_eds(e: &ExternalHost, policy: Option<&ClusterPolicy>) -> bool {
    e.resolution == Resolution::Static
        && !policy.is_some_and(|p| p.load_balancer == Some(LoadBalancer::Passthrough))
}

/// The endpoints of an external host's port (with `subset`: only those carrying its labels),
/// grouped by locality. DNS resolution without endpoints resolves the host itself.
pub(super) fn assignment(
    name: &str,
    e: &ExternalHost,
    port: &ExternalPort,
    subset: Option<&BTreeMap<String, String>>,
) -> ClusterLoadAssignment {
    let mut by_locality: BTreeMap<(String, String, String), (Vec<_>, u32)> = BTreeMap::new();
    let dns = matches!(e.resolution, Resolution::Dns | Resolution::DnsRoundRobin);
    if dns && e.endpoints.is_empty() && subset.is_none_or(BTreeMap::is_empty) {
        let port = port.target_port.unwrap_or(port.number);
        by_locality
            .entry(Default::default())
            .or_default()
            .0
            .push(lb_endpoint(&e.key.name, port, None));
    }
    for ep in &e.endpoints {
        if subset.is_some_and(|l| l.iter().any(|(k, v)| ep.labels.get(k) != Some(v))) {
            continue;
        }
        let entry = by_locality.entry(ep.locality.clone()).or_default();
        entry
            .0
            .push(lb_endpoint(&ep.address, ep.port_for(port), ep.weight));
        entry.1 += ep.weight.unwrap_or(1);
    }
    ClusterLoadAssignment {
        cluster_name: name.to_string(),
        endpoints: by_locality
            .into_iter()
            .map(
                |((region, zone, sub_zone), (lb_endpoints, weight))| LocalityLbEndpoints {
                    locality: Some(Locality {
                        region,
                        zone,
                        sub_zone,
                    }),
                    load_balancing_weight: (!dns).then(|| envoy::u32_value(weight.max(1))),
                    lb_endpoints,
                    ..Default::default()
                },
            )
            .collect(),
        ..Default::default()
    }
}

/// Clusters (and EDS assignments) of one external host, its subsets included.
pub(super) fn insert_clusters(
    ctx: &Ctx<'_>,
    s: &SvcCtx<'_>,
    e: &ExternalHost,
    clusters: &mut Resources,
    endpoints: &mut Resources,
) {
    let dp = ctx.routing.policies.get(&e.key);
    for (p, port) in s.ports.iter().zip(&e.ports) {
        let policy = dp.map(|dp| dp.for_port(port.number));
        let c = external_cluster(&p.cluster, e, port, policy.as_ref(), None);
        clusters.insert(
            p.cluster.clone(),
            Arc::new(resource(&p.cluster, &c, Some(e.origin.clone()))),
        );
        if uses_eds(e, policy.as_ref()) {
            let cla = assignment(&p.cluster, e, port, None);
            endpoints.insert(
                p.cluster.clone(),
                Arc::new(resource(&p.cluster, &cla, Some(e.origin.clone()))),
            );
        }
        for subset in dp.map(|dp| dp.subsets.as_slice()).unwrap_or(&[]) {
            let name = super::subset_cluster_name(&p.cluster, &subset.name);
            let origin = dp.map(|dp| dp.origin.clone());
            let c = external_cluster(&name, e, port, Some(&subset.policy), Some(&subset.labels));
            clusters.insert(name.clone(), Arc::new(resource(&name, &c, origin.clone())));
            if uses_eds(e, Some(&subset.policy)) {
                let cla = assignment(&name, e, port, Some(&subset.labels));
                endpoints.insert(name.clone(), Arc::new(resource(&name, &cla, origin)));
            }
        }
    }
}

fn prefixes(e: &ExternalHost) -> Vec<CidrRange> {
    e.addresses
        .iter()
        .map(|(ip, len)| CidrRange {
            address_prefix: ip.to_string(),
            prefix_len: Some(envoy::u32_value(u32::from(*len))),
        })
        .collect()
}

/// The outbound filter chains of every external host, and the `tls_inspector` listener filter
/// when a TLS port is matched by SNI (enabled on those destination ports only, so server-first
/// protocols elsewhere are not held up waiting for a ClientHello).
pub(super) fn filter_chains(ctx: &Ctx<'_>) -> (Vec<FilterChain>, Option<ListenerFilter>) {
    let mut chains = Vec::new();
    let mut http_done: BTreeSet<(u16, Vec<(std::net::IpAddr, u8)>)> = BTreeSet::new();
    let mut sni_ports = BTreeSet::new();
    for s in &ctx.services {
        let Some(e) = &s.external else { continue };
        for (p, port) in s.ports.iter().zip(&e.ports) {
            let mut m = FilterChainMatch {
                destination_port: Some(envoy::u32_value(u32::from(port.number))),
                prefix_ranges: prefixes(e),
                ..Default::default()
            };
            let (name, filter) = match port.protocol {
                ExternalProtocol::Http => {
                    if !http_done.insert((port.number, e.addresses.clone())) {
                        continue; // one chain per port and address set, all hosts in its RDS
                    }
                    let rds = external_route_name(port.number);
                    let name = if e.addresses.is_empty() {
                        format!("{rds}|http")
                    } else {
                        format!("{rds}|http|{}", p.cluster)
                    };
                    let hcm = http_connection_manager(&rds, rds.clone(), Side::Sidecar, ctx.opts, true);
                    (name, network_filter(names::HTTP_CONNECTION_MANAGER, &hcm))
                }
                ExternalProtocol::Tls => {
                    m.server_names = vec![e.key.name.clone()];
                    sni_ports.insert(port.number);
                    (p.cluster.clone(), tcp_proxy(&p.cluster, &p.cluster))
                }
                ExternalProtocol::Tcp => {
                    let filter = match ctx.tcp_routes.get(&p.cluster) {
                        Some(split) => weighted_tcp_proxy(&p.cluster, split),
                        None => tcp_proxy(&p.cluster, &p.cluster),
                    };
                    (p.cluster.clone(), filter)
                }
            };
            chains.push(FilterChain {
                name,
                filter_chain_match: Some(m),
                filters: vec![filter],
                ..Default::default()
            });
        }
    }
    let inspector = (!sni_ports.is_empty()).then(|| {
        let mut f = listener_filter(names::TLS_INSPECTOR, &TlsInspector::default());
        let port = |p: &u16| ListenerFilterChainMatchPredicate {
            rule: Some(Rule::DestinationPortRange(Int32Range {
                start: i32::from(*p),
                end: i32::from(*p) + 1,
            })),
        };
        let mut ports: Vec<ListenerFilterChainMatchPredicate> = sni_ports.iter().map(port).collect();
        // Envoy wants at least two rules in a MatchSet.
        let any_of = if ports.len() == 1 {
            ports.remove(0)
        } else {
            ListenerFilterChainMatchPredicate {
                rule: Some(Rule::OrMatch(MatchSet { rules: ports })),
            }
        };
        f.filter_disabled = Some(ListenerFilterChainMatchPredicate {
            rule: Some(Rule::NotMatch(Box::new(any_of))),
        });
        f
    });
    (chains, inspector)
}

/// One route configuration per ServiceEntry HTTP port: a virtual host per host on that port (its
/// VirtualService rules, then the host's cluster), then every other host per the outbound policy.
pub(super) fn route_configs(
    ctx: &Ctx<'_>,
    pod: &Settings,
    caller: Option<(&str, &BTreeMap<String, String>)>,
    pod_origin: Option<&ObjectRef>,
) -> Resources {
    let mut by_port: BTreeMap<u16, Vec<VirtualHost>> = BTreeMap::new();
    for s in &ctx.services {
        let Some(e) = &s.external else { continue };
        for (p, port) in s.ports.iter().zip(&e.ports) {
            if port.protocol != ExternalProtocol::Http {
                continue;
            }
            let rc = super::routes::caller_route_config(ctx, s, p, pod, caller);
            for mut vh in rc.virtual_hosts {
                vh.domains = vec![e.key.name.clone(), format!("{}:{}", e.key.name, port.number)];
                by_port.entry(port.number).or_default().push(vh);
            }
        }
    }
    let mut out = Resources::new();
    for (port, mut virtual_hosts) in by_port {
        virtual_hosts.push(unknown_host(ctx.opts.outbound_policy));
        let name = external_route_name(port);
        let rc = RouteConfiguration {
            name: name.clone(),
            virtual_hosts,
            ..Default::default()
        };
        out.insert(name.clone(), Arc::new(resource(&name, &rc, pod_origin.cloned())));
    }
    out
}

/// The virtual host for HTTP requests to a host no ServiceEntry declares.
fn unknown_host(policy: OutboundPolicy) -> VirtualHost {
    let (name, action) = match policy {
        OutboundPolicy::Passthrough => (
            "allow_any",
            route::Action::Route(RouteAction {
                cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(
                    PASSTHROUGH_CLUSTER.into(),
                )),
                timeout: Some(envoy::duration(std::time::Duration::ZERO)),
                ..Default::default()
            }),
        ),
        OutboundPolicy::Block => (
            "block_all",
            route::Action::DirectResponse(DirectResponseAction {
                status: 502,
                ..Default::default()
            }),
        ),
    };
    VirtualHost {
        name: name.to_string(),
        domains: vec!["*".to_string()],
        routes: vec![Route {
            name: name.to_string(),
            r#match: Some(RouteMatch {
                path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
                ..Default::default()
            }),
            action: Some(action),
            ..Default::default()
        }],
        ..Default::default()
    }
}
