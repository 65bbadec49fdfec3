//! Istio Gateways and the VirtualServices bound to them (`gateways: [name | ns/name]`): one
//! [`GatewayServer`] per usable `servers[]` entry, its virtual hosts the hosts of the bound
//! VirtualServices that the server's `hosts` accept (the intersection: a VirtualService host
//! `*` under a server host `a.example.com` gives `a.example.com`). Which gateway proxies get a
//! server (`selector`) and on which listener it lands is the translator's business
//! (`translate::gateway_servers`).
//!
//! - Protocols: `HTTP` (optionally `tls.httpsRedirect`) and `HTTPS` with `tls.mode: SIMPLE` and a
//!   `credentialName`; any other protocol or TLS mode is reported and the server left out.
//! - A server host `ns/host` binds only VirtualServices of namespace `ns` (`.`: the Gateway's,
//!   `*`: any).
//! - Several VirtualServices for one domain of a server merge in precedence order (creation time,
//!   then namespace/name); rules behind an earlier catch-all rule are reported as unreachable.

use std::collections::BTreeMap;

use traffic_istio::gateway::{Server, TlsMode};
use traffic_istio::{Gateway, IstioConfig, VirtualService};

use super::{object_ref, order_key, virtual_service};
use crate::routing::{GatewayServer, HttpRule, RoutingModel, ServerProtocol};
use crate::translate::Problem;

/// The Gateway a `gateways` entry of `vs` names (`name` in the VirtualService's namespace, or
/// `ns/name`); `mesh` is not one.
fn gateway<'c>(config: &'c IstioConfig, vs: &VirtualService, name: &str) -> Option<&'c Gateway> {
    let (ns, name) = name.split_once('/').unwrap_or((&vs.metadata.namespace, name));
    config
        .gateways
        .iter()
        .find(|g| g.metadata.namespace == ns && g.metadata.name == name)
}

/// Whether `vs` names `gw` in its `gateways`.
fn binds(vs: &VirtualService, gw: &Gateway) -> bool {
    vs.spec.gateways.iter().filter(|g| *g != "mesh").any(|g| {
        let (ns, name) = g.split_once('/').unwrap_or((&vs.metadata.namespace, g));
        ns == gw.metadata.namespace && name == gw.metadata.name
    })
}

/// Whether the host pattern `pattern` (`host`, `*.suffix`, `*`) accepts `host` (itself possibly
/// a narrower wildcard).
pub(crate) fn accepts(pattern: &str, host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    let pattern = pattern.to_ascii_lowercase();
    pattern == "*"
        || pattern == host
        || pattern
            .strip_prefix('*')
            .is_some_and(|suffix| host.len() > suffix.len() && host.ends_with(suffix))
}

/// The domain a VirtualService host gives under a server host: the narrower of the two, `None`
/// when they do not overlap.
pub(crate) fn intersect(server_host: &str, vs_host: &str) -> Option<String> {
    if accepts(server_host, vs_host) {
        Some(vs_host.to_ascii_lowercase())
    } else if accepts(vs_host, server_host) {
        Some(server_host.to_ascii_lowercase())
    } else {
        None
    }
}

/// A server `hosts` entry as (namespace condition, host).
fn split_server_host<'h>(gw: &'h Gateway, entry: &'h str) -> (Option<&'h str>, &'h str) {
    match entry.split_once('/') {
        None => (None, entry),
        Some(("*", host)) => (None, host),
        Some((".", host)) => (Some(gw.metadata.namespace.as_str()), host),
        Some((ns, host)) => (Some(ns), host),
    }
}

/// The server's protocol, or why it cannot be served.
fn server_protocol(server: &Server) -> Result<(ServerProtocol, bool), String> {
    let protocol = server.port.protocol.as_deref().unwrap_or("").to_ascii_uppercase();
    let tls = server.tls.as_ref();
    match protocol.as_str() {
        "HTTP" => Ok((
            ServerProtocol::Http,
            tls.and_then(|t| t.https_redirect).unwrap_or(false),
        )),
        "HTTPS" => {
            let tls = tls.ok_or("an HTTPS server needs tls")?;
            match &tls.mode {
                Some(TlsMode::Simple) => {}
                Some(m) => {
                    return Err(format!(
                        "tls.mode {} is not supported on the gateway yet (SIMPLE is)",
                        m.as_str()
                    ))
                }
                None => return Err("an HTTPS server needs tls.mode".into()),
            }
            let credential_name = tls
                .credential_name
                .clone()
                .filter(|c| !c.is_empty())
                .ok_or("tls.mode SIMPLE needs credentialName (a kubernetes.io/tls Secret)")?;
            Ok((ServerProtocol::Https { credential_name }, false))
        }
        other => Err(format!(
            "protocol {other:?} is not served by the gateway (HTTP and HTTPS are)"
        )),
    }
}

/// Lowers the Gateways and binds the gateway-bound VirtualServices (`vss` in precedence order,
/// `lowered` their usable rules) to their servers.
pub(super) fn lower_gateways(
    config: &IstioConfig,
    vss: &[&VirtualService],
    lowered: &[Vec<HttpRule>],
    model: &mut RoutingModel,
    problems: &mut Vec<Problem>,
) {
    for v in vss {
        for g in v.spec.gateways.iter().filter(|g| *g != "mesh") {
            if gateway(config, v, g).is_none() {
                problems.push(Problem::UnresolvedReference {
                    object: object_ref("VirtualService", &v.metadata),
                    rule: "spec.gateways".into(),
                    message: format!("Gateway {g:?} not found, so its rules are not bound to it"),
                });
            }
        }
    }
    let mut gateways: Vec<&Gateway> = config.gateways.iter().collect();
    gateways.sort_by(|a, b| order_key(&a.metadata).cmp(&order_key(&b.metadata)));
    for gw in gateways {
        let origin = object_ref("Gateway", &gw.metadata);
        for (index, server) in gw.spec.servers.iter().enumerate() {
            let path = format!("spec.servers[{index}]");
            let (protocol, https_redirect) = match server_protocol(server) {
                Ok(p) => p,
                Err(message) => {
                    problems.push(Problem::IstioRule {
                        object: origin.clone(),
                        path,
                        message: format!("{message}; server ignored"),
                    });
                    continue;
                }
            };
            let Some(port) = u16::try_from(server.port.number).ok().filter(|p| *p > 0) else {
                continue; // validation reports it
            };
            let mut out = GatewayServer {
                origin: origin.clone(),
                index,
                selector: gw.spec.selector.clone(),
                port,
                protocol,
                https_redirect,
                hosts: server
                    .hosts
                    .iter()
                    .map(|h| split_server_host(gw, h).1.to_ascii_lowercase())
                    .collect(),
                virtual_hosts: BTreeMap::new(),
            };
            bind(gw, server, vss, lowered, &mut out, problems);
            model.gateway_servers.push(out);
        }
    }
}

/// Adds the rules of the VirtualServices bound to `gw` whose hosts the server accepts.
fn bind(
    gw: &Gateway,
    server: &Server,
    vss: &[&VirtualService],
    lowered: &[Vec<HttpRule>],
    out: &mut GatewayServer,
    problems: &mut Vec<Problem>,
) {
    for (v, rules) in vss.iter().zip(lowered).filter(|(v, _)| binds(v, gw)) {
        let origin = object_ref("VirtualService", &v.metadata);
        for vs_host in &v.spec.hosts {
            let domains: Vec<String> = server
                .hosts
                .iter()
                .map(|h| split_server_host(gw, h))
                .filter(|(ns, _)| ns.is_none_or(|ns| ns == v.metadata.namespace))
                .filter_map(|(_, h)| intersect(h, vs_host))
                .collect();
            // The narrowest first: one domain per VirtualService host and server.
            let Some(domain) = domains.into_iter().max_by_key(|d| (!d.contains('*'), d.len())) else {
                continue;
            };
            let closed = out
                .virtual_hosts
                .get(&domain)
                .is_some_and(|rs| rs.iter().any(HttpRule::is_catch_all));
            if closed {
                problems.push(Problem::IstioRule {
                    object: origin.clone(),
                    path: "spec.hosts".into(),
                    message: format!(
                        "gateway host {domain:?} ({}): rules unreachable behind an earlier VirtualService's catch-all rule",
                        out.label()
                    ),
                });
                continue;
            }
            out.virtual_hosts
                .entry(domain)
                .or_default()
                .extend(rules.iter().cloned());
        }
    }
}

/// The rules for the gateway (any port; `match.port` is not evaluated there).
pub(super) fn gateway_rules(lowered: &[virtual_service::LoweredRule]) -> Vec<HttpRule> {
    lowered.iter().map(|r| r.rule.clone()).collect()
}
