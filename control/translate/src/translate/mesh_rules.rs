//! The routing model's rules checked against what is pushed: a rule naming a Service, port or
//! subset that has no cluster is not emitted (and reported), so no route ever names a missing
//! cluster (Envoy's 503 `NC`). Also reports label settings the rules override.

use std::collections::BTreeMap;

use traffic_labels::PortProtocol;

use super::context::{service_ref, Ctx};
use super::Problem;
use crate::routing::{merge, Destination, GatewayServer, HttpAction, HttpRule, RoutingModel};

/// Base cluster name -> the usable rules of that Service port, in order.
///
/// A rule without `match.port` is placed on every port of its host; like Istio, it applies to the
/// HTTP ones and is reported on a non-HTTP port only when it has no HTTP port at all. A
/// destination without a port on a Service of several ports takes the port the request came in
/// on (Istio's reading).
pub(super) fn resolve(ctx: &Ctx<'_>, problems: &mut Vec<Problem>) -> BTreeMap<String, Vec<HttpRule>> {
    let mut out = BTreeMap::new();
    let is_http = |key, port: &u16| {
        ctx.service(key)
            .and_then(|s| s.ports.iter().find(|p| p.port.port == *port))
            .is_some_and(|p| p.protocol == Some(PortProtocol::Http))
    };
    let on_http_port: std::collections::BTreeSet<(&str, &crate::snapshot::ObjectRef)> = ctx
        .routing
        .http
        .iter()
        .filter(|((key, port), _)| is_http(key, port))
        .flat_map(|(_, rules)| rules.iter().map(|r| (r.name.as_str(), &r.origin)))
        .collect();
    for ((key, port), rules) in &ctx.routing.http {
        let Some(s) = ctx.service(key) else {
            continue; // lowering only places rules on existing Services
        };
        let Some(p) = s.ports.iter().find(|p| p.port.port == *port) else {
            continue;
        };
        if p.protocol != Some(PortProtocol::Http) {
            for rule in rules {
                if on_http_port.contains(&(rule.name.as_str(), &rule.origin)) {
                    continue;
                }
                problems.push(Problem::UnresolvedReference {
                    object: rule.origin.clone(),
                    rule: rule.name.clone(),
                    message: format!(
                        "port {port} of Service {}/{} is not HTTP (name it http-* or label it traffic.port.{port}=http)",
                        key.namespace, key.name
                    ),
                });
            }
            continue;
        }
        let mut usable = Vec::new();
        for rule in rules {
            let rule = &with_request_port(rule, *port);
            match unresolved(rule, ctx) {
                Some(message) => problems.push(Problem::UnresolvedReference {
                    object: rule.origin.clone(),
                    rule: rule.name.clone(),
                    message,
                }),
                None => usable.push(rule.clone()),
            }
        }
        if usable.is_empty() {
            continue;
        }
        label_overrides(ctx, s, *port, &usable, problems);
        out.insert(p.cluster.clone(), usable);
    }
    out
}

/// The Gateway servers with only the usable rules of each virtual host (a virtual host left
/// without rules is dropped; the server stays).
pub(super) fn resolve_gateway(ctx: &Ctx<'_>, problems: &mut Vec<Problem>) -> Vec<GatewayServer> {
    let mut out = Vec::new();
    for server in &ctx.routing.gateway_servers {
        let mut server = server.clone();
        server.virtual_hosts.retain(|_, rules| {
            rules.retain(|rule| match unresolved(rule, ctx) {
                Some(message) => {
                    problems.push(Problem::UnresolvedReference {
                        object: rule.origin.clone(),
                        rule: rule.name.clone(),
                        message,
                    });
                    false
                }
                None => true,
            });
            !rules.is_empty()
        });
        out.push(server);
    }
    out
}

/// Base cluster name -> the (cluster, weight) split of each usable `tcp[]` route.
pub(super) fn resolve_tcp(
    ctx: &Ctx<'_>,
    problems: &mut Vec<Problem>,
) -> BTreeMap<String, Vec<(String, u32)>> {
    let mut out = BTreeMap::new();
    for ((key, port), route) in &ctx.routing.tcp {
        let Some(p) = ctx
            .service(key)
            .and_then(|s| s.ports.iter().find(|p| p.port.port == *port))
        else {
            continue;
        };
        if p.protocol != Some(PortProtocol::Tcp) {
            problems.push(Problem::UnresolvedReference {
                object: route.origin.clone(),
                rule: format!("tcp to port {port}"),
                message: format!("port {port} of {}/{} is not a TCP port", key.namespace, key.name),
            });
            continue;
        }
        match route
            .destinations
            .iter()
            .find_map(|(d, _)| missing(d, ctx, &ctx.routing))
        {
            Some(message) => problems.push(Problem::UnresolvedReference {
                object: route.origin.clone(),
                rule: format!("tcp to port {port}"),
                message,
            }),
            None => {
                let split = route
                    .destinations
                    .iter()
                    .map(|(d, w)| (super::mesh_routes::destination_cluster(d), *w))
                    .collect();
                out.insert(p.cluster.clone(), split);
            }
        }
    }
    out
}

/// `rule` with its port-less destinations (and mirrors) sent to `port`, the request's.
fn with_request_port(rule: &HttpRule, port: u16) -> HttpRule {
    let mut rule = rule.clone();
    if let HttpAction::Route(ds) = &mut rule.action {
        for d in ds.iter_mut().filter(|d| d.destination.port == 0) {
            d.destination.port = port;
        }
    }
    for m in rule.mirrors.iter_mut().filter(|m| m.destination.port == 0) {
        m.destination.port = port;
    }
    rule
}

/// Why a rule cannot be emitted, if it cannot.
fn unresolved(rule: &HttpRule, ctx: &Ctx<'_>) -> Option<String> {
    let destinations: Vec<&Destination> = match &rule.action {
        HttpAction::Route(ds) => ds.iter().map(|d| &d.destination).collect(),
        HttpAction::Redirect(_) | HttpAction::DirectResponse { .. } => Vec::new(),
    };
    let mirrors = rule.mirrors.iter().map(|m| &m.destination);
    for d in destinations.into_iter().chain(mirrors) {
        if let Some(why) = missing(d, ctx, &ctx.routing) {
            return Some(why);
        }
    }
    None
}

fn missing(d: &Destination, ctx: &Ctx<'_>, routing: &RoutingModel) -> Option<String> {
    let host = format!("{}.{}", d.service.name, d.service.namespace);
    let Some(s) = ctx.service(&d.service) else {
        return Some(format!(
            "destination {host} is not a Service or ServiceEntry host"
        ));
    };
    if d.port == 0 {
        return Some(format!(
            "destination {host} has several ports; name one with destination.port.number"
        ));
    }
    if !s.ports.iter().any(|p| p.port.port == d.port) {
        return Some(format!("destination {host} has no TCP port {}", d.port));
    }
    let subset = d.subset.as_deref()?;
    let defined = routing
        .policies
        .get(&d.service)
        .is_some_and(|p| p.subset(subset).is_some());
    (!defined).then(|| format!("subset {subset:?} of {host} is defined by no DestinationRule"))
}

/// A label setting of the Service that a rule replaces is reported on the Service (the label
/// still applies to rules that do not set it); which settings lose is [`merge::overridden`]'s.
fn label_overrides(
    ctx: &Ctx<'_>,
    s: &super::context::SvcCtx<'_>,
    port: u16,
    rules: &[HttpRule],
    problems: &mut Vec<Problem>,
) {
    let Some(default) = ctx.routing.defaults.get(&(
        crate::routing::ServiceKey::new(&s.svc.namespace, &s.svc.name),
        port,
    )) else {
        return;
    };
    for (setting, by) in merge::overridden(&default.rule, rules) {
        problems.push(Problem::LabelOverridden {
            service: service_ref(s.svc),
            setting: setting.to_string(),
            port,
            by: by.clone(),
        });
    }
}
