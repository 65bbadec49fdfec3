//! VirtualServices bound to Istio Gateways (`gateways: [name | ns/name]`): their rules become
//! virtual hosts of the ingress gateway (`traffic-ingress`), one per VirtualService host that an
//! HTTP server of the Gateway accepts. Every Gateway applies to our one gateway proxy (its
//! `selector` is not evaluated) and serves on the gateway's HTTP listener (its `port.number` is
//! not a listener of its own); HTTPS servers are not translated yet (reported).

use traffic_istio::{Gateway, IstioConfig, VirtualService};

use super::{object_ref, virtual_service};
use crate::routing::{HttpRule, RoutingModel};
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

/// Whether a server `hosts` entry (`host`, `*.suffix`, `*`, optionally `ns/` first) accepts
/// `host`.
fn accepts(server_host: &str, host: &str) -> bool {
    let pattern = server_host.split_once('/').map_or(server_host, |(_, h)| h);
    pattern == "*"
        || pattern.eq_ignore_ascii_case(host)
        || pattern.strip_prefix('*').is_some_and(|suffix| {
            host.len() > suffix.len() && host.to_ascii_lowercase().ends_with(&suffix.to_ascii_lowercase())
        })
}

/// Places the rules of gateway-bound VirtualServices (`vss` in precedence order) on the gateway
/// hosts of `model`.
pub(super) fn lower_gateway_bindings(
    config: &IstioConfig,
    vss: &[&VirtualService],
    lowered: &[Vec<HttpRule>],
    model: &mut RoutingModel,
    problems: &mut Vec<Problem>,
) {
    for (v, rules) in vss.iter().zip(lowered) {
        let origin = object_ref("VirtualService", &v.metadata);
        for g in v.spec.gateways.iter().filter(|g| *g != "mesh") {
            let Some(gw) = gateway(config, v, g) else {
                problems.push(Problem::IstioRule {
                    object: origin.clone(),
                    path: "spec.gateways".into(),
                    message: format!("Gateway {g:?} not found; not bound"),
                });
                continue;
            };
            let http: Vec<_> = gw
                .spec
                .servers
                .iter()
                .filter(|s| {
                    s.port
                        .protocol
                        .as_deref()
                        .is_some_and(|p| p.eq_ignore_ascii_case("HTTP"))
                })
                .collect();
            if http.len() < gw.spec.servers.len() {
                problems.push(Problem::IstioRule {
                    object: object_ref("Gateway", &gw.metadata),
                    path: "spec.servers".into(),
                    message: "only HTTP servers are translated yet; the others are ignored".into(),
                });
            }
            for host in &v.spec.hosts {
                if !http.iter().any(|s| s.hosts.iter().any(|h| accepts(h, host))) {
                    continue;
                }
                let closed = model
                    .gateway_hosts
                    .get(host)
                    .is_some_and(|rs| rs.iter().any(HttpRule::is_catch_all));
                if closed {
                    problems.push(Problem::IstioRule {
                        object: origin.clone(),
                        path: "spec.hosts".into(),
                        message: format!(
                            "gateway host {host:?}: rules unreachable behind an earlier VirtualService's catch-all rule"
                        ),
                    });
                    continue;
                }
                model
                    .gateway_hosts
                    .entry(host.clone())
                    .or_default()
                    .extend(rules.iter().cloned());
            }
        }
    }
}

/// The rules for the gateway (any port; `match.port` is not evaluated there).
pub(super) fn gateway_rules(lowered: &[virtual_service::LoweredRule]) -> Vec<HttpRule> {
    lowered.iter().map(|r| r.rule.clone()).collect()
}
