//! RDS: a sidecar's route configuration per `http` service port (label policy: timeout, retries,
//! hashing, tracing, faults, rate limit), and the route to a service the gateway shares.

use std::collections::BTreeMap;
use std::sync::Arc;

use envoy_types::pb::envoy::config::route::v3::{
    route, route_action, route_action::hash_policy, route_match, Route, RouteAction, RouteConfiguration,
    RouteMatch, Tracing as RouteTracing, VirtualHost,
};
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::{fault_delay, FaultDelay};
use envoy_types::pb::envoy::extensions::filters::http::bandwidth_limit::v3::{
    bandwidth_limit::EnableMode, BandwidthLimit,
};
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{fault_abort, FaultAbort, HttpFault};
use envoy_types::pb::google::protobuf::UInt64Value;
use traffic_labels::{ClusterPolicy, PortProtocol, Settings, TrafficPolicy};

use super::context::{protocol_at, Ctx, PortCtx, SvcCtx};
use super::mesh_routes;
use super::{Options, RATE_LIMIT_STAT_PREFIX};
use crate::envoy::{self, names, resource};
use crate::model::Pod;
use crate::routing::{HttpRule, RoutingModel};
use crate::snapshot::{ObjectRef, Resources};

/// Route configurations of a sidecar: one per `http` service port, named like its cluster.
///
/// `caller`: the pod this view is for (`None`: the shared view), for rules with source conditions.
/// The sidecar route configuration of Service port `p` for a caller (namespace, labels): the
/// mesh rules that apply to that caller, then the label-derived route.
pub(super) fn caller_route_config(
    ctx: &Ctx<'_>,
    s: &SvcCtx<'_>,
    p: &PortCtx<'_>,
    traffic: &TrafficPolicy,
    caller: Option<(&str, &BTreeMap<String, String>)>,
) -> RouteConfiguration {
    let rules: Vec<HttpRule> = ctx
        .rules
        .get(&p.cluster)
        .map(Vec::as_slice)
        .unwrap_or(&[])
        .iter()
        .filter_map(|r| r.for_caller(caller))
        .collect();
    service_route_config(
        &p.cluster,
        &s.settings.cluster,
        traffic,
        (&rules, &ctx.routing),
        Side::Sidecar,
        ctx.opts,
    )
}

pub(super) fn sidecar_routes(
    ctx: &Ctx<'_>,
    pod: &Settings,
    caller: Option<&Pod>,
    pod_origin: Option<&ObjectRef>,
) -> Resources {
    let caller = caller.map(|p| (p.namespace.as_str(), &p.labels));
    let mut out = Resources::new();
    for s in ctx.services.iter().filter(|s| s.external.is_none()) {
        let traffic = pod.traffic.overlay(&s.settings.traffic);
        for p in &s.ports {
            if protocol_at(pod, s, p) != Some(PortProtocol::Http) {
                continue;
            }
            let rc = caller_route_config(ctx, s, p, &traffic, caller);
            let origin = pod_origin.cloned().unwrap_or_else(|| s.origin.clone());
            out.insert(
                p.cluster.clone(),
                Arc::new(resource(&p.cluster, &rc, Some(origin))),
            );
        }
    }
    out.extend(super::external::route_configs(ctx, pod, caller, pod_origin));
    out
}

/// Where a route is used: sidecars get fault injection and rate limits, the gateway does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    Sidecar,
    Gateway,
}

/// The per-service part of a route: action (timeout, retries, hashing), tracing and faults.
pub(super) fn route_to_service(
    cluster: &str,
    match_: route_match::PathSpecifier,
    policy: &ClusterPolicy,
    traffic: &TrafficPolicy,
    side: Side,
    opts: &Options,
) -> Route {
    let mut action = RouteAction {
        cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(cluster.to_string())),
        // Always set: Envoy's default is 15 s, the contract's default is "none" (0).
        timeout: Some(envoy::duration(traffic.request_timeout.unwrap_or_default())),
        ..Default::default()
    };

    let conditions = [
        ("5xx", traffic.retries.on_5xx),
        ("connect-failure", traffic.retries.on_connect_failure),
        ("gateway-error", traffic.retries.on_gateway_error),
    ];
    let active: Vec<(&str, u32)> = conditions
        .iter()
        .filter_map(|(name, n)| n.filter(|n| *n > 0).map(|n| (*name, n)))
        .collect();
    if !active.is_empty() {
        // Envoy has one retry budget per route: the largest count, on any of the conditions.
        action.retry_policy = Some(envoy_types::pb::envoy::config::route::v3::RetryPolicy {
            retry_on: active.iter().map(|(name, _)| *name).collect::<Vec<_>>().join(","),
            num_retries: active.iter().map(|(_, n)| *n).max().map(envoy::u32_value),
            ..Default::default()
        });
    }

    if let Some(cookie) = &policy.hash_cookie_name {
        action.hash_policy.push(route_action::HashPolicy {
            policy_specifier: Some(hash_policy::PolicySpecifier::Cookie(hash_policy::Cookie {
                name: cookie.clone(),
                // With a TTL Envoy generates the cookie (set-cookie ...; Max-Age=<ttl>).
                ttl: policy
                    .hash_cookie_ttl
                    .filter(|d| !d.is_zero())
                    .map(envoy::duration),
                path: "/".to_string(),
                ..Default::default()
            })),
            ..Default::default()
        });
    }
    if let Some(header) = &policy.hash_header_name {
        action.hash_policy.push(route_action::HashPolicy {
            policy_specifier: Some(hash_policy::PolicySpecifier::Header(hash_policy::Header {
                header_name: header.clone(),
                ..Default::default()
            })),
            ..Default::default()
        });
    }

    let mut route = Route {
        name: cluster.to_string(),
        r#match: Some(RouteMatch {
            path_specifier: Some(match_),
            ..Default::default()
        }),
        action: Some(route::Action::Route(action)),
        ..Default::default()
    };

    if opts.zipkin.is_some() {
        let sampling = if traffic.tracing_enabled == Some(true) {
            traffic
                .tracing_sampling
                .unwrap_or(traffic_labels::defaults::TRACING_SAMPLING)
        } else {
            traffic_labels::Percent::ZERO
        };
        route.tracing = Some(RouteTracing {
            random_sampling: Some(envoy::fractional_percent(sampling)),
            ..Default::default()
        });
    }

    if side == Side::Sidecar {
        if let Some(fault) = http_fault(traffic) {
            route
                .typed_per_filter_config
                .insert(names::FAULT.to_string(), envoy::any(&fault));
        }
    }
    route
}

pub(super) fn http_fault(traffic: &TrafficPolicy) -> Option<HttpFault> {
    let f = &traffic.fault;
    let delay = match (f.delay_time, f.delay_percentage) {
        (Some(t), Some(p)) if !t.is_zero() && p.ppm() > 0 => Some(FaultDelay {
            percentage: Some(envoy::fractional_percent(p)),
            fault_delay_secifier: Some(fault_delay::FaultDelaySecifier::FixedDelay(envoy::duration(t))),
        }),
        _ => None,
    };
    let abort = match (f.abort_status, f.abort_percentage) {
        (Some(status), Some(p)) if status > 0 && p.ppm() > 0 => Some(FaultAbort {
            percentage: Some(envoy::fractional_percent(p)),
            error_type: Some(fault_abort::ErrorType::HttpStatus(u32::from(status))),
            ..Default::default()
        }),
        _ => None,
    };
    (delay.is_some() || abort.is_some()).then(|| HttpFault {
        delay,
        abort,
        ..Default::default()
    })
}

pub(super) fn bandwidth_limit(traffic: &TrafficPolicy) -> Option<BandwidthLimit> {
    let kbps = traffic.rate_limit_kbps.filter(|k| *k > 0)?;
    Some(BandwidthLimit {
        stat_prefix: RATE_LIMIT_STAT_PREFIX.to_string(),
        enable_mode: EnableMode::RequestAndResponse as i32,
        limit_kbps: Some(UInt64Value { value: kbps }),
        ..Default::default()
    })
}

/// A sidecar's route configuration for one service port: the routing model's rules for the port
/// (if any, see `mesh_routes`), then every path to the service's cluster with the label policy
/// (left out when a rule already matches every request).
pub(super) fn service_route_config(
    cluster: &str,
    policy: &ClusterPolicy,
    traffic: &TrafficPolicy,
    (rules, routing): (&[HttpRule], &RoutingModel),
    side: Side,
    opts: &Options,
) -> RouteConfiguration {
    let route = route_to_service(
        cluster,
        route_match::PathSpecifier::Prefix("/".into()),
        policy,
        traffic,
        side,
        opts,
    );
    let mut routes: Vec<Route> = rules
        .iter()
        .flat_map(|rule| mesh_routes::rule_routes(rule, &route, routing, side))
        .collect();
    if !rules.iter().any(HttpRule::is_catch_all) {
        routes.push(route);
    }
    let mut vhost = VirtualHost {
        name: cluster.to_string(),
        domains: vec!["*".to_string()],
        routes,
        ..Default::default()
    };
    if side == Side::Sidecar {
        if let Some(bw) = bandwidth_limit(traffic) {
            vhost
                .typed_per_filter_config
                .insert(names::BANDWIDTH_LIMIT.to_string(), envoy::any(&bw));
        }
    }
    RouteConfiguration {
        name: cluster.to_string(),
        virtual_hosts: vec![vhost],
        ..Default::default()
    }
}
