//! RDS: a sidecar's route configuration per `http` service port — the port's rules from the
//! routing model, merged with the port's label default rule ([`crate::routing::merge`]), then
//! rendered by `mesh_routes` — and the rate limit of the port.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use envoy_types::pb::envoy::config::route::v3::{FilterConfig, Route, RouteConfiguration, VirtualHost};
use envoy_types::pb::envoy::extensions::filters::http::bandwidth_limit::v3::{
    bandwidth_limit::EnableMode, BandwidthLimit,
};
use envoy_types::pb::google::protobuf::UInt64Value;
use traffic_labels::{PortProtocol, Settings};

use super::context::{protocol_at, Ctx, PortCtx, SvcCtx};
use super::mesh_routes::rule_routes;
use super::{Options, RATE_LIMIT_STAT_PREFIX};
use crate::envoy::{self, names, resource};
use crate::model::Pod;
use crate::routing::{merge, DefaultRoute, HttpRule, ServiceKey};
use crate::snapshot::{ObjectRef, Resources};

/// The default rule of Service `s`'s port `port` as a caller with labels `pod` sees it: the
/// model's (lowered once from the Service's labels) when the pod's labels say nothing about
/// requests, else the pod's labels layered over the Service's, lowered for that caller.
pub(super) fn default_route<'c>(
    ctx: &'c Ctx<'_>,
    s: &SvcCtx<'_>,
    port: u16,
    pod: &Settings,
) -> Cow<'c, DefaultRoute> {
    let key = ServiceKey::new(&s.svc.namespace, &s.svc.name);
    if pod.traffic.is_empty() {
        if let Some(d) = ctx.routing.defaults.get(&(key.clone(), port)) {
            return Cow::Borrowed(d);
        }
    }
    Cow::Owned(crate::label_lower::default_route(
        &key,
        port,
        &s.origin,
        &pod.traffic.overlay(&s.settings.traffic),
        &s.settings.cluster,
    ))
}

/// The sidecar route configuration of Service port `p` for a caller with labels `pod` and
/// (namespace, labels) `caller` (`None`: the shared view): the model's rules that apply to that
/// caller, merged with the caller's default rule.
pub(super) fn caller_route_config(
    ctx: &Ctx<'_>,
    s: &SvcCtx<'_>,
    p: &PortCtx<'_>,
    pod: &Settings,
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
    let default = default_route(ctx, s, p.port.port, pod);
    let merged = merge::port_rules(&rules, &default.rule, &ctx.routing);
    service_route_config(
        &p.cluster,
        &merged,
        default.rate_limit_kbps,
        Side::Sidecar,
        ctx.opts,
    )
}

/// Route configurations of a sidecar: one per `http` service port, named like its cluster.
///
/// `pod`: the labels of the pod this view is for (`caller`; `None`: the shared view), which may
/// change port protocols, the label policy and which rules with source conditions apply.
pub(super) fn sidecar_routes(
    ctx: &Ctx<'_>,
    pod: &Settings,
    caller: Option<&Pod>,
    pod_origin: Option<&ObjectRef>,
) -> Resources {
    let caller = caller.map(|p| (p.namespace.as_str(), &p.labels));
    let mut out = Resources::new();
    for s in ctx.services.iter().filter(|s| s.external.is_none()) {
        for p in &s.ports {
            if protocol_at(pod, s, p) != Some(PortProtocol::Http) {
                continue;
            }
            let rc = caller_route_config(ctx, s, p, pod, caller);
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

/// The route of Service `s`'s port `port` on the gateway (Ingress routes, which set their own
/// match): its default rule with what the destination policy adds ([`merge::default_rule`]).
pub(super) fn gateway_default_route(ctx: &Ctx<'_>, s: &SvcCtx<'_>, port: u16) -> Option<Route> {
    let default = default_route(ctx, s, port, &Settings::default());
    let rule = merge::default_rule(&default.rule, &ctx.routing);
    rule_routes(&rule, Side::Gateway, ctx.opts).into_iter().next()
}

pub(super) fn bandwidth_limit(kbps: Option<u64>) -> Option<BandwidthLimit> {
    let kbps = kbps.filter(|k| *k > 0)?;
    Some(BandwidthLimit {
        stat_prefix: RATE_LIMIT_STAT_PREFIX.to_string(),
        enable_mode: EnableMode::RequestAndResponse as i32,
        limit_kbps: Some(UInt64Value { value: kbps }),
        ..Default::default()
    })
}

/// A route configuration for one service port: the port's merged rules, in order, in one
/// virtual host for every domain, with the port's rate limit (sidecars only).
pub(super) fn service_route_config(
    cluster: &str,
    rules: &[HttpRule],
    rate_limit_kbps: Option<u64>,
    side: Side,
    opts: &Options,
) -> RouteConfiguration {
    let routes: Vec<Route> = rules
        .iter()
        .flat_map(|rule| rule_routes(rule, side, opts))
        .collect();
    let mut vhost = VirtualHost {
        name: cluster.to_string(),
        domains: vec!["*".to_string()],
        routes,
        ..Default::default()
    };
    if side == Side::Sidecar {
        if let Some(bw) = bandwidth_limit(rate_limit_kbps) {
            // Optional: proxyless gRPC clients get this route configuration too, and NACK a
            // filter override they do not know unless it is marked optional (Envoy applies it).
            let optional = FilterConfig {
                config: Some(envoy::any(&bw)),
                is_optional: true,
                ..Default::default()
            };
            vhost
                .typed_per_filter_config
                .insert(names::BANDWIDTH_LIMIT.to_string(), envoy::any(&optional));
        }
    }
    RouteConfiguration {
        name: cluster.to_string(),
        virtual_hosts: vec![vhost],
        ..Default::default()
    }
}
