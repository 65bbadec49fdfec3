//! The ingress gateway's Istio Gateway servers (see `istio_lower::gateway`): listeners, route
//! configurations and HTTPS filter chains.
//!
//! - `selector`: a Gateway applies to the ingress gateway when its selector is a subset of
//!   [`Options::ingress_labels`] (the gateway pods' labels); otherwise it is reported.
//! - `port.number` -> listener: `80` and `--ingress-http-port` are the gateway's HTTP listener
//!   (sharing the Ingress route configuration `ingress`), `443` and `--ingress-https-port` its
//!   HTTPS listener (filter chains beside the Ingress ones); any other port >= 1024 gets a
//!   listener of its own (`gateway_<port>`), which the gateway's Service must expose to be
//!   reachable. Ports below 1024 (the gateway runs unprivileged) and the stats port are
//!   reported. The first server on a port decides its protocol; a server of the other protocol
//!   there is reported.
//! - HTTP servers: their virtual hosts join the port's route configuration (a domain already
//!   there stays the earlier one's, reported); `httpsRedirect` gives `require_tls: ALL` (301).
//! - HTTPS servers (`SIMPLE`): one filter chain each, `server_names` = the server's hosts (SNI
//!   chooses the certificate; `*` = any), the certificate of `credentialName` (a
//!   `kubernetes.io/tls` Secret in the Gateway's namespace; missing or unusable: only that server
//!   is dropped, reported), and a route configuration of its own (`https.<port>.<ns>/<gateway>.<i>`)
//!   holding only that server's virtual hosts. A request for any other host gets Envoy's 404.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::core::v3::TrafficDirection;
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, Listener};
use envoy_types::pb::envoy::config::route::v3::{
    virtual_host::TlsRequirementType, RouteConfiguration, VirtualHost,
};
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;

use super::context::Ctx;
use super::gateway_tls::{common_tls_context, tls_filter_chain, SecretChecker};
use super::listeners::{http_connection_manager, listener_filter, network_filter};
use super::mesh_routes::rule_routes;
use super::routes::Side;
use super::{Options, Problem};
use crate::envoy::{self, names};
use crate::routing::{merge, GatewayServer, HttpRule, ServerProtocol};
use crate::snapshot::{ObjectRef, Resources};

/// What the Gateway servers add to the ingress gateway's view.
#[derive(Default)]
pub(super) struct GatewayOutput {
    /// Virtual hosts of the `ingress` route configuration (HTTP servers on the HTTP listener).
    pub ingress_virtual_hosts: Vec<VirtualHost>,
    /// Filter chains of the gateway's HTTPS listener.
    pub ingress_https_chains: Vec<FilterChain>,
    /// Listeners of other ports.
    pub listeners: Vec<(Listener, Option<ObjectRef>)>,
    pub routes: Vec<(RouteConfiguration, Option<ObjectRef>)>,
}

/// Where a server lands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Port {
    IngressHttp,
    IngressHttps,
    Own(u16),
}

/// The listener of `port.number`, or why there is none.
fn listener_port(opts: &Options, number: u16) -> Result<Port, String> {
    if number == 80 || number == opts.ingress_http_port {
        Ok(Port::IngressHttp)
    } else if number == 443 || number == opts.ingress_https_port {
        Ok(Port::IngressHttps)
    } else if number < 1024 {
        Err(format!(
            "port {number}: the gateway runs unprivileged and binds 80 (as --ingress-http-port {}), 443 (as --ingress-https-port {}) or ports >= 1024",
            opts.ingress_http_port, opts.ingress_https_port
        ))
    } else if Some(number) == opts.stats_port {
        Err(format!("port {number} is the gateway's stats port"))
    } else {
        Ok(Port::Own(number))
    }
}

fn selector_matches(opts: &Options, selector: &BTreeMap<String, String>) -> bool {
    selector
        .iter()
        .all(|(k, v)| opts.ingress_labels.get(k) == Some(v))
}

/// Builds the ingress gateway's part of the Gateway servers. `ingress_domains`: domains the
/// Ingress route configuration already has; `claimed`: SNI names the Ingress TLS chains took.
pub(super) fn gateway_servers<'m>(
    ctx: &Ctx<'m>,
    ingress_domains: BTreeSet<String>,
    checker: &mut SecretChecker<'m>,
    claimed: &mut BTreeSet<String>,
    secrets: &mut Resources,
    problems: &mut Vec<Problem>,
) -> GatewayOutput {
    let opts = ctx.opts;
    let mut out = GatewayOutput::default();
    let mut unselected: BTreeSet<&ObjectRef> = BTreeSet::new();
    // Own port -> its protocol (the first server's).
    let mut own: BTreeMap<u16, bool> = BTreeMap::new();
    // HTTP listener -> its virtual hosts so far.
    let mut http: BTreeMap<Port, Vec<VirtualHost>> = BTreeMap::new();
    http.insert(Port::IngressHttp, Vec::new());
    let mut taken: BTreeMap<Port, BTreeSet<String>> = BTreeMap::new();
    taken.insert(Port::IngressHttp, ingress_domains);
    // HTTPS listener -> (filter chains, claimed SNI names).
    let mut https: BTreeMap<Port, Vec<FilterChain>> = BTreeMap::new();
    let mut own_claims: BTreeMap<u16, BTreeSet<String>> = BTreeMap::new();
    let mut origins: BTreeMap<Port, BTreeSet<ObjectRef>> = BTreeMap::new();

    for server in &ctx.gateway_servers {
        if !selector_matches(opts, &server.selector) {
            unselected.insert(&server.origin);
            continue;
        }
        let is_https = matches!(server.protocol, ServerProtocol::Https { .. });
        let port = match listener_port(opts, server.port) {
            Ok(p) => p,
            Err(message) => {
                report(problems, server, format!("{message}; server ignored"));
                continue;
            }
        };
        let port_https = match port {
            Port::IngressHttp => false,
            Port::IngressHttps => true,
            Port::Own(n) => *own.entry(n).or_insert(is_https),
        };
        if port_https != is_https {
            report(
                problems,
                server,
                format!(
                    "port {} is already an {} listener; server ignored",
                    server.port,
                    if port_https { "HTTPS" } else { "HTTP" }
                ),
            );
            continue;
        }
        origins.entry(port).or_default().insert(server.origin.clone());
        match &server.protocol {
            ServerProtocol::Http => {
                let taken = taken.entry(port).or_default();
                let vhosts = http.entry(port).or_default();
                for (domain, rules) in &server.virtual_hosts {
                    if !taken.insert(domain.clone()) {
                        problems.push(Problem::IstioRule {
                            object: rules[0].origin.clone(),
                            path: "spec.hosts".into(),
                            message: format!(
                                "host {domain:?} on gateway port {} is already served (by an Ingress or an earlier Gateway server); not bound to {}",
                                server.port,
                                server.label()
                            ),
                        });
                        continue;
                    }
                    vhosts.push(istio_virtual_host(
                        ctx,
                        domain,
                        rules,
                        server.https_redirect,
                        problems,
                    ));
                }
            }
            ServerProtocol::Https { credential_name } => {
                let Some(secret) = checker.usable(ctx, &server.origin, credential_name, problems) else {
                    continue;
                };
                let claims = match port {
                    Port::Own(n) => own_claims.entry(n).or_default(),
                    _ => &mut *claimed,
                };
                let Some(server_names) = claim(server, claims, problems) else {
                    continue;
                };
                let listener = listener_name(port);
                let route = format!("https.{}.{}", server.port, server.label());
                let common = common_tls_context(secret, opts, secrets);
                https.entry(port).or_default().push(tls_filter_chain(
                    server.label(),
                    server_names,
                    common,
                    (&listener, &route),
                    opts,
                ));
                let virtual_hosts = server
                    .virtual_hosts
                    .iter()
                    .map(|(domain, rules)| istio_virtual_host(ctx, domain, rules, false, problems))
                    .collect();
                out.routes.push((
                    RouteConfiguration {
                        name: route,
                        virtual_hosts,
                        ignore_port_in_host_matching: true,
                        ..Default::default()
                    },
                    Some(server.origin.clone()),
                ));
            }
        }
    }
    for origin in unselected {
        problems.push(Problem::IstioRule {
            object: origin.clone(),
            path: "spec.selector".into(),
            message: format!(
                "selects no gateway proxy: the ingress gateway's labels are {}; not applied",
                opts.ingress_labels
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        });
    }
    let only = |port: &Port| {
        let o = origins.get(port)?;
        (o.len() == 1).then(|| o.iter().next().cloned()).flatten()
    };
    for (port, vhosts) in http {
        match port {
            Port::Own(n) => {
                let name = listener_name(port);
                out.routes.push((
                    RouteConfiguration {
                        name: name.clone(),
                        virtual_hosts: vhosts,
                        ignore_port_in_host_matching: true,
                        ..Default::default()
                    },
                    only(&port),
                ));
                out.listeners
                    .push((own_http_listener(&name, n, opts), only(&port)));
            }
            _ => out.ingress_virtual_hosts = vhosts,
        }
    }
    for (port, chains) in https {
        match port {
            Port::Own(n) => {
                let name = listener_name(port);
                out.listeners.push((tls_listener(&name, n, chains), only(&port)));
            }
            _ => out.ingress_https_chains = chains,
        }
    }
    out
}

fn report(problems: &mut Vec<Problem>, server: &GatewayServer, message: String) {
    problems.push(Problem::IstioRule {
        object: server.origin.clone(),
        path: format!("spec.servers[{}]", server.index),
        message,
    });
}

fn listener_name(port: Port) -> String {
    match port {
        Port::IngressHttp => super::INGRESS_HTTP_LISTENER.into(),
        Port::IngressHttps => super::INGRESS_HTTPS_LISTENER.into(),
        Port::Own(n) => format!("gateway_{n}"),
    }
}

/// The server's SNI names no earlier chain on the listener claimed (`*`: any, as `""`);
/// `None` (reported) when nothing is left.
fn claim(
    server: &GatewayServer,
    claimed: &mut BTreeSet<String>,
    problems: &mut Vec<Problem>,
) -> Option<Vec<String>> {
    if server.hosts.iter().any(|h| h == "*") {
        if claimed.insert(String::new()) {
            return Some(Vec::new());
        }
        report(
            problems,
            server,
            "host \"*\" (any SNI name) is already served on this port; server ignored".into(),
        );
        return None;
    }
    let mut names = Vec::new();
    for h in &server.hosts {
        if claimed.insert(h.clone()) {
            names.push(h.clone());
        } else {
            report(
                problems,
                server,
                format!(
                    "TLS host {h:?} is already served on port {}; ignored here",
                    server.port
                ),
            );
        }
    }
    (!names.is_empty()).then_some(names)
}

/// One virtual host of Istio rules on the gateway.
pub(super) fn istio_virtual_host(
    ctx: &Ctx<'_>,
    domain: &str,
    rules: &[HttpRule],
    https_redirect: bool,
    problems: &mut Vec<Problem>,
) -> VirtualHost {
    for r in rules.iter().filter(|r| r.fault.is_some()) {
        problems.push(Problem::IstioRule {
            object: r.origin.clone(),
            path: r.name.clone(),
            message: "fault injection is applied by sidecars only; ignored on the gateway".into(),
        });
    }
    let default = super::gateway::gateway_default_rule(ctx, rules);
    let routes = rules
        .iter()
        .map(|r| match &default {
            Some(d) => merge::over_default(r, d, &ctx.routing),
            None => r.clone(),
        })
        .flat_map(|r| rule_routes(&r, Side::Gateway, ctx.opts))
        .collect();
    VirtualHost {
        name: domain.to_string(),
        domains: vec![domain.to_string()],
        routes,
        require_tls: if https_redirect {
            TlsRequirementType::All as i32
        } else {
            TlsRequirementType::None as i32
        },
        ..Default::default()
    }
}

fn own_http_listener(name: &str, port: u16, opts: &Options) -> Listener {
    Listener {
        name: name.to_string(),
        address: Some(envoy::socket_address("0.0.0.0", port)),
        filter_chains: vec![FilterChain {
            filters: vec![network_filter(
                names::HTTP_CONNECTION_MANAGER,
                &http_connection_manager(name, name.to_string(), Side::Gateway, opts, true),
            )],
            ..Default::default()
        }],
        traffic_direction: TrafficDirection::Inbound as i32,
        ..Default::default()
    }
}

/// A listener reading the SNI (TLS inspector) with one filter chain per server.
pub(super) fn tls_listener(name: &str, port: u16, chains: Vec<FilterChain>) -> Listener {
    Listener {
        name: name.to_string(),
        address: Some(envoy::socket_address("0.0.0.0", port)),
        listener_filters: vec![listener_filter(names::TLS_INSPECTOR, &TlsInspector::default())],
        filter_chains: chains,
        traffic_direction: TrafficDirection::Inbound as i32,
        ..Default::default()
    }
}
