//! The ingress gateway's (`traffic-ingress`) view: Ingress rules -> one `ingress` route
//! configuration shared by an HTTP listener and (when any Ingress has TLS, see [`super::gateway_tls`])
//! an HTTPS listener, plus every service cluster and endpoint assignment.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::TrafficDirection;
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, Listener};
use envoy_types::pb::envoy::config::route::v3::{
    route_match, Route, RouteConfiguration, RouteMatch, VirtualHost,
};

use super::context::{ingress_ref, resolve_service_port, Ctx};
use super::gateway_servers::{gateway_servers, tls_listener};
use super::gateway_tls::{https_filter_chains, SecretChecker};
use super::listeners::{http_connection_manager, network_filter};
use super::routes::{default_route, gateway_default_route, Side};
use super::{node_resources, Options, Problem, TlsDelivery};
use super::{INGRESS_HTTPS_LISTENER, INGRESS_HTTP_LISTENER, INGRESS_ROUTE};
use crate::envoy::{self, names, resource};
use crate::model::{Ingress, IngressBackend, PathType, TargetPort};
use crate::routing::{HttpAction, HttpRule};
use crate::snapshot::{NodeResources, Resources};

struct IngressPathRoute {
    exact: bool,
    path: String,
    route: Route,
}

fn ingress_route(
    ctx: &Ctx<'_>,
    ing: &Ingress,
    backend: &IngressBackend,
    path_type: PathType,
    path: &str,
    problems: &mut Vec<Problem>,
) -> Option<IngressPathRoute> {
    if let Err(error) = crate::ingress_check::check_path(path) {
        problems.push(Problem::InvalidPath {
            ingress: ingress_ref(ing),
            path: path.to_string(),
            error,
        });
        return None;
    }
    let Some(s) = ctx
        .services
        .iter()
        .find(|s| s.svc.namespace == ing.namespace && s.svc.name == backend.service)
    else {
        problems.push(Problem::MissingService {
            ingress: ingress_ref(ing),
            service: backend.service.clone(),
        });
        return None;
    };
    let Some(port) = resolve_service_port(s.svc, &backend.port) else {
        problems.push(Problem::MissingPort {
            ingress: ingress_ref(ing),
            service: backend.service.clone(),
            port: match &backend.port {
                TargetPort::Number(n) => n.to_string(),
                TargetPort::Name(n) => n.clone(),
            },
        });
        return None;
    };
    let exact = path_type == PathType::Exact;
    let (specifier, path) = if exact {
        (
            route_match::PathSpecifier::Path(path.to_string()),
            path.to_string(),
        )
    } else {
        // Kubernetes `Prefix` matches whole path elements (`/foo` matches `/foo/bar`, not
        // `/foobar`) and ignores a trailing slash: exactly Envoy's path_separated_prefix.
        let trimmed = path.trim_end_matches('/');
        if trimmed.is_empty() {
            (route_match::PathSpecifier::Prefix("/".into()), "/".to_string())
        } else {
            (
                route_match::PathSpecifier::PathSeparatedPrefix(trimmed.to_string()),
                trimmed.to_string(),
            )
        }
    };
    let mut route = gateway_default_route(ctx, s, port.port)?;
    route.r#match = Some(RouteMatch {
        path_specifier: Some(specifier),
        ..Default::default()
    });
    Some(IngressPathRoute { exact, path, route })
}

/// The ingress gateway's view: HTTP (and HTTPS if any Ingress has TLS) listeners sharing the
/// `ingress` route configuration, plus every service cluster and endpoint assignment.
pub(super) fn gateway(
    ctx: &Ctx<'_>,
    clusters: Resources,
    endpoints: Resources,
    problems: &mut Vec<Problem>,
) -> NodeResources {
    let opts = ctx.opts;
    let mut ingresses: Vec<&Ingress> = ctx.model.ingresses.iter().collect();
    ingresses.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    // Resources built from several Ingresses have no single origin.
    let only_ingress = (ingresses.len() == 1).then(|| ingress_ref(ingresses[0]));

    let mut route_config = ingress_route_config(ctx, &ingresses, problems);
    let mut checker = SecretChecker::new(opts);
    let mut claimed = BTreeSet::new();
    let mut secrets = Resources::new();
    let mut chains = https_filter_chains(
        ctx,
        &ingresses,
        &mut checker,
        &mut claimed,
        &mut secrets,
        problems,
    );
    let domains = route_config
        .virtual_hosts
        .iter()
        .flat_map(|v| v.domains.clone())
        .collect();
    let istio = gateway_servers(ctx, domains, &mut checker, &mut claimed, &mut secrets, problems);
    route_config.virtual_hosts.extend(istio.ingress_virtual_hosts);
    chains.extend(istio.ingress_https_chains);

    let mut routes = Resources::new();
    routes.insert(
        INGRESS_ROUTE.into(),
        Arc::new(resource(INGRESS_ROUTE, &route_config, only_ingress.clone())),
    );
    for (r, origin) in istio.routes {
        routes.insert(r.name.clone(), Arc::new(resource(&r.name, &r, origin)));
    }

    let mut listeners = Resources::new();
    listeners.insert(
        INGRESS_HTTP_LISTENER.into(),
        Arc::new(resource(
            INGRESS_HTTP_LISTENER,
            &http_listener(opts),
            only_ingress.clone(),
        )),
    );
    if !chains.is_empty() {
        listeners.insert(
            INGRESS_HTTPS_LISTENER.into(),
            Arc::new(resource(
                INGRESS_HTTPS_LISTENER,
                &tls_listener(INGRESS_HTTPS_LISTENER, opts.ingress_https_port, chains),
                only_ingress,
            )),
        );
    }
    for (l, origin) in istio.listeners {
        listeners.insert(l.name.clone(), Arc::new(resource(&l.name, &l, origin)));
    }
    let secrets = (opts.ingress_tls == TlsDelivery::Sds).then_some(secrets);
    node_resources(listeners, routes, clusters, endpoints, secrets)
}

/// `host` of `ing` normalized (lowercase DNS name), or `None` with the problem reported: an invalid
/// host costs only its own rule or TLS entry.
pub(super) fn checked_host(ing: &Ingress, host: &str, problems: &mut Vec<Problem>) -> Option<String> {
    match crate::ingress_check::check_host(host) {
        Ok(host) => Some(host),
        Err(error) => {
            problems.push(Problem::InvalidHost {
                ingress: ingress_ref(ing),
                host: host.to_string(),
                error,
            });
            None
        }
    }
}

/// The `ingress` route configuration: one virtual host per Ingress host (`*` for rules without
/// one), routes merged across Ingresses in Kubernetes precedence, the default backend last.
fn ingress_route_config(
    ctx: &Ctx<'_>,
    ingresses: &[&Ingress],
    problems: &mut Vec<Problem>,
) -> RouteConfiguration {
    // host ("*" for rules without host) -> routes, merged across Ingresses.
    let mut hosts: BTreeMap<String, Vec<IngressPathRoute>> = BTreeMap::new();
    let mut defaults: Vec<IngressPathRoute> = Vec::new();
    for ing in ingresses {
        for rule in &ing.rules {
            let host = match &rule.host {
                None => "*".to_string(),
                Some(host) => match checked_host(ing, host, problems) {
                    Some(host) => host,
                    None => continue,
                },
            };
            for p in &rule.paths {
                if let Some(r) = ingress_route(ctx, ing, &p.backend, p.path_type, &p.path, problems) {
                    hosts.entry(host.clone()).or_default().push(r);
                }
            }
        }
        if let Some(backend) = &ing.default_backend {
            if let Some(r) = ingress_route(ctx, ing, backend, PathType::Prefix, "/", problems) {
                defaults.push(r);
            }
        }
    }
    hosts.entry("*".to_string()).or_default();
    let default_route = defaults.into_iter().next().map(|d| d.route);

    let virtual_hosts: Vec<VirtualHost> = hosts
        .into_iter()
        .filter_map(|(host, routes)| ingress_virtual_host(host, routes, default_route.as_ref()))
        .collect();
    RouteConfiguration {
        name: INGRESS_ROUTE.to_string(),
        virtual_hosts,
        ignore_port_in_host_matching: true,
        ..Default::default()
    }
}

/// The label default rule Istio rules on the gateway are merged with: the one of the first
/// destination's Service port (its timeout, retries, hashing, tracing); `None` when no rule
/// routes anywhere.
pub(super) fn gateway_default_rule(ctx: &Ctx<'_>, rules: &[HttpRule]) -> Option<HttpRule> {
    let first = rules.iter().find_map(|r| match &r.action {
        HttpAction::Route(ds) => ds.first().map(|d| &d.destination),
        _ => None,
    })?;
    let s = ctx.service(&first.service)?;
    let default = default_route(ctx, s, first.port, &traffic_labels::Settings::default());
    Some(default.rule.clone())
}

/// One host's routes in Kubernetes precedence (exact paths first, then longer prefixes before
/// shorter ones; duplicates after the first dropped), then the default backend; `None` if empty.
fn ingress_virtual_host(
    host: String,
    mut routes: Vec<IngressPathRoute>,
    default_route: Option<&Route>,
) -> Option<VirtualHost> {
    routes.sort_by(|a, b| {
        b.exact
            .cmp(&a.exact)
            .then(b.path.len().cmp(&a.path.len()))
            .then(a.path.cmp(&b.path))
    });
    let mut seen = BTreeSet::new();
    let mut routes: Vec<Route> = routes
        .into_iter()
        .filter(|r| seen.insert((r.exact, r.path.clone())))
        .map(|r| r.route)
        .collect();
    if let Some(d) = default_route {
        routes.push(d.clone());
    }
    if routes.is_empty() {
        return None;
    }
    Some(VirtualHost {
        name: host.clone(),
        domains: vec![host],
        routes,
        ..Default::default()
    })
}

fn http_listener(opts: &Options) -> Listener {
    Listener {
        name: INGRESS_HTTP_LISTENER.to_string(),
        address: Some(envoy::socket_address("0.0.0.0", opts.ingress_http_port)),
        filter_chains: vec![FilterChain {
            filters: vec![network_filter(
                names::HTTP_CONNECTION_MANAGER,
                &http_connection_manager(
                    INGRESS_HTTP_LISTENER,
                    INGRESS_ROUTE.into(),
                    Side::Gateway,
                    opts,
                    true,
                ),
            )],
            ..Default::default()
        }],
        traffic_direction: TrafficDirection::Inbound as i32,
        ..Default::default()
    }
}
