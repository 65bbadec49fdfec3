//! LDS: the sidecar's outbound listener (one filter chain per service `clusterIP:port`), the stats
//! listener, and the HTTP connection manager / tcp_proxy filters the gateway uses too.

use envoy_types::pb::envoy::config::core::v3::TrafficDirection;
use envoy_types::pb::envoy::config::listener::v3::{
    filter, listener_filter, Filter, FilterChain, FilterChainMatch, Listener, ListenerFilter,
};
use envoy_types::pb::envoy::config::route::v3::{
    route, route_action, route_match, DirectResponseAction, Route, RouteAction, RouteConfiguration,
    RouteMatch, VirtualHost,
};
use envoy_types::pb::envoy::config::trace::v3::{tracing, zipkin_config, ZipkinConfig};
use envoy_types::pb::envoy::extensions::filters::http::bandwidth_limit::v3::BandwidthLimit;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::listener::original_dst::v3::OriginalDst;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager, http_filter, HttpConnectionManager, HttpFilter, Rds,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{tcp_proxy, TcpProxy};
use envoy_types::pb::envoy::r#type::v3::Percent as PbPercent;
use envoy_types::pb::google::protobuf::BoolValue;
use traffic_labels::{PortProtocol, Settings};

use super::context::{protocol_at, Ctx};
use super::routes::Side;
use super::{
    Options, OutboundPolicy, ADMIN_CLUSTER, BLACKHOLE_CLUSTER, OUTBOUND_LISTENER, PASSTHROUGH_CLUSTER,
    RATE_LIMIT_STAT_PREFIX, STATS_LISTENER, ZIPKIN_CLUSTER,
};
use crate::envoy::{self, names};

pub(super) fn http_filter<M: prost::Message + prost::Name>(name: &str, config: &M) -> HttpFilter {
    HttpFilter {
        name: name.to_string(),
        config_type: Some(http_filter::ConfigType::TypedConfig(envoy::any(config))),
        ..Default::default()
    }
}

pub(super) fn zipkin_tracing() -> http_connection_manager::Tracing {
    let zipkin = ZipkinConfig {
        collector_cluster: ZIPKIN_CLUSTER.to_string(),
        collector_endpoint: "/api/v2/spans".to_string(),
        collector_endpoint_version: zipkin_config::CollectorEndpointVersion::HttpJson as i32,
        shared_span_context: Some(BoolValue { value: false }),
        ..Default::default()
    };
    http_connection_manager::Tracing {
        // Routes decide (their `tracing.random_sampling`); requests that already carry a sampled
        // trace context are traced regardless.
        random_sampling: Some(PbPercent { value: 0.0 }),
        provider: Some(tracing::Http {
            name: names::ZIPKIN.to_string(),
            config_type: Some(tracing::http::ConfigType::TypedConfig(envoy::any(&zipkin))),
        }),
        ..Default::default()
    }
}

pub(super) fn http_connection_manager(
    stat_prefix: &str,
    rds_name: String,
    side: Side,
    opts: &Options,
    tracing: bool,
) -> HttpConnectionManager {
    let mut http_filters = Vec::new();
    if side == Side::Sidecar {
        // Empty at listener level; routes (fault) and virtual hosts (rate limit) configure them.
        http_filters.push(http_filter(names::FAULT, &HttpFault::default()));
        http_filters.push(http_filter(
            names::BANDWIDTH_LIMIT,
            &BandwidthLimit {
                stat_prefix: RATE_LIMIT_STAT_PREFIX.to_string(),
                ..Default::default()
            },
        ));
    }
    http_filters.push(http_filter(names::ROUTER, &Router::default()));
    HttpConnectionManager {
        stat_prefix: stat_prefix.to_string(),
        route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
            config_source: Some(envoy::ads()),
            route_config_name: rds_name,
        })),
        http_filters,
        tracing: (tracing && opts.zipkin.is_some()).then(zipkin_tracing),
        use_remote_address: (side == Side::Gateway).then_some(BoolValue { value: true }),
        ..Default::default()
    }
}

pub(super) fn network_filter<M: prost::Message + prost::Name>(name: &str, config: &M) -> Filter {
    Filter {
        name: name.to_string(),
        config_type: Some(filter::ConfigType::TypedConfig(envoy::any(config))),
    }
}

pub(super) fn tcp_proxy(stat_prefix: &str, cluster: &str) -> Filter {
    network_filter(
        names::TCP_PROXY,
        &TcpProxy {
            stat_prefix: stat_prefix.to_string(),
            cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(cluster.to_string())),
            ..Default::default()
        },
    )
}

/// tcp_proxy splitting connections over `(cluster, weight)` (Istio `tcp[]` routes).
pub(super) fn weighted_tcp_proxy(stat_prefix: &str, split: &[(String, u32)]) -> Filter {
    let specifier = match split {
        [(only, _)] => tcp_proxy::ClusterSpecifier::Cluster(only.clone()),
        many => tcp_proxy::ClusterSpecifier::WeightedClusters(tcp_proxy::WeightedCluster {
            clusters: many
                .iter()
                .map(|(name, weight)| tcp_proxy::weighted_cluster::ClusterWeight {
                    name: name.clone(),
                    weight: *weight,
                    ..Default::default()
                })
                .collect(),
        }),
    };
    network_filter(
        names::TCP_PROXY,
        &TcpProxy {
            stat_prefix: stat_prefix.to_string(),
            cluster_specifier: Some(specifier),
            ..Default::default()
        },
    )
}

pub(super) fn listener_filter<M: prost::Message + prost::Name>(name: &str, config: &M) -> ListenerFilter {
    ListenerFilter {
        name: name.to_string(),
        config_type: Some(listener_filter::ConfigType::TypedConfig(envoy::any(config))),
        ..Default::default()
    }
}

/// The outbound listener: original destination restored by the listener filter, one filter chain
/// per service `clusterIP:port` with a protocol (`http` -> HTTP connection manager with RDS,
/// `tcp` -> tcp_proxy, `direct` -> tcp_proxy to the original destination). Ports with no protocol
/// get no chain: the default chain blocks them, or proxies them to their original destination
/// under [`OutboundPolicy::Passthrough`].
pub(super) fn outbound_listener(ctx: &Ctx<'_>, pod: &Settings) -> Listener {
    let mut filter_chains = Vec::new();
    for s in &ctx.services {
        if s.svc.cluster_ips.is_empty() {
            continue;
        }
        for p in &s.ports {
            let filter = match protocol_at(pod, s, p) {
                Some(PortProtocol::Http) => network_filter(
                    names::HTTP_CONNECTION_MANAGER,
                    &http_connection_manager(&p.cluster, p.cluster.clone(), Side::Sidecar, ctx.opts, true),
                ),
                Some(PortProtocol::Tcp) => match ctx.tcp_routes.get(&p.cluster) {
                    Some(split) => weighted_tcp_proxy(&p.cluster, split),
                    None => tcp_proxy(&p.cluster, &p.cluster),
                },
                // `direct` is not redirected by the agent; if a connection arrives anyway (e.g. the
                // label is only on the Service), forward it untouched rather than block it.
                Some(PortProtocol::Direct) => tcp_proxy(&p.cluster, PASSTHROUGH_CLUSTER),
                None => continue,
            };
            filter_chains.push(FilterChain {
                name: p.cluster.clone(),
                filter_chain_match: Some(FilterChainMatch {
                    destination_port: Some(envoy::u32_value(u32::from(p.port.port))),
                    prefix_ranges: s.svc.cluster_ips.iter().map(|ip| envoy::cidr(*ip)).collect(),
                    ..Default::default()
                }),
                filters: vec![filter],
                ..Default::default()
            });
        }
    }
    let (external_chains, tls_inspector) = super::external::filter_chains(ctx);
    filter_chains.extend(external_chains);
    // Two chains with the same match make Envoy reject the listener: the first one stays (Service
    // chains come first; ServiceEntry conflicts are reported when they are lowered).
    let mut seen = Vec::new();
    filter_chains.retain(|c| {
        let m = c.filter_chain_match.clone().unwrap_or_default();
        if seen.contains(&m) {
            ::tracing::warn!(chain = %c.name, "outbound filter chain left out: an earlier chain has the same match");
            return false;
        }
        seen.push(m);
        true
    });
    let default_cluster = match ctx.opts.outbound_policy {
        OutboundPolicy::Passthrough => PASSTHROUGH_CLUSTER,
        OutboundPolicy::Block => BLACKHOLE_CLUSTER,
    };
    let default_filter_chain = Some(FilterChain {
        name: default_cluster.to_string(),
        filters: vec![tcp_proxy(default_cluster, default_cluster)],
        ..Default::default()
    });
    Listener {
        name: OUTBOUND_LISTENER.to_string(),
        address: Some(envoy::socket_address("0.0.0.0", ctx.opts.outbound_port)),
        listener_filters: std::iter::once(listener_filter(names::ORIGINAL_DST, &OriginalDst {}))
            .chain(tls_inspector)
            .collect(),
        filter_chains,
        default_filter_chain,
        traffic_direction: TrafficDirection::Outbound as i32,
        ..Default::default()
    }
}

/// `:<port>` serving only `GET /stats/prometheus` from the admin interface on 127.0.0.1.
pub(super) fn stats_listener(port: u16) -> Listener {
    let routes = RouteConfiguration {
        name: STATS_LISTENER.to_string(),
        virtual_hosts: vec![VirtualHost {
            name: STATS_LISTENER.to_string(),
            domains: vec!["*".to_string()],
            routes: vec![
                Route {
                    r#match: Some(RouteMatch {
                        path_specifier: Some(route_match::PathSpecifier::Path("/stats/prometheus".into())),
                        ..Default::default()
                    }),
                    action: Some(route::Action::Route(RouteAction {
                        cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(
                            ADMIN_CLUSTER.into(),
                        )),
                        ..Default::default()
                    })),
                    ..Default::default()
                },
                Route {
                    r#match: Some(RouteMatch {
                        path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
                        ..Default::default()
                    }),
                    action: Some(route::Action::DirectResponse(DirectResponseAction {
                        status: 404,
                        ..Default::default()
                    })),
                    ..Default::default()
                },
            ],
            ..Default::default()
        }],
        ..Default::default()
    };
    let hcm = HttpConnectionManager {
        stat_prefix: STATS_LISTENER.to_string(),
        route_specifier: Some(http_connection_manager::RouteSpecifier::RouteConfig(routes)),
        http_filters: vec![http_filter(names::ROUTER, &Router::default())],
        ..Default::default()
    };
    Listener {
        name: STATS_LISTENER.to_string(),
        address: Some(envoy::socket_address("0.0.0.0", port)),
        filter_chains: vec![FilterChain {
            filters: vec![network_filter(names::HTTP_CONNECTION_MANAGER, &hcm)],
            ..Default::default()
        }],
        ..Default::default()
    }
}
