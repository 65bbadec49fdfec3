//! The Istio front end's lowering: validated `networking.istio.io` objects (from
//! `traffic_istio::validate_config`) -> [`RoutingModel`].
//!
//! - Hosts (`reviews`, `reviews.default`, `reviews.default.svc`, `reviews.default.svc.cluster.local`,
//!   optionally with a `<namespace>/` prefix) resolve to the Kubernetes Service; short names are
//!   relative to the object's namespace. Otherwise a host names a ServiceEntry host (exact, case
//!   insensitive; ServiceEntries are visible from every namespace). Other hosts are reported.
//! - ServiceEntries become [`crate::routing::ExternalHost`]s (see [`service_entry`]); VirtualServices
//!   and DestinationRules address their hosts like Services.
//! - VirtualServices apply to mesh sidecars when `gateways` is empty or names `mesh`. Several for
//!   one host are merged deterministically: creation time, then namespace/name; a later one's
//!   rules behind an earlier catch-all rule are reported as unreachable.
//! - DestinationRules: the first for a host (same order) gives the traffic policy; later ones add
//!   subsets with new names; whatever they cannot add is reported.
//! - A rule is placed on every TCP port of its host that its matches allow (`match.port`).
//! - VirtualServices naming Gateways give the ingress gateway virtual hosts (see [`gateway`]).

mod destination_rule;
mod gateway;
mod service_entry;
mod virtual_service;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use traffic_istio::validate::{Dropped, ObjectReport};
use traffic_istio::{DestinationRule, Kind, ObjectMeta, ValidatedConfig, VirtualService};

use crate::model::{PortProtocol as L4, Service};
use crate::routing::{ExternalHost, HttpRule, RoutingModel, ServiceKey};
use crate::snapshot::ObjectRef;
use crate::translate::Problem;

const CLUSTER_DOMAIN: &str = "cluster.local";

/// A Service (or ServiceEntry host) a host name resolved to, with its TCP ports.
pub(crate) struct ResolvedHost {
    pub service: ServiceKey,
    pub ports: Vec<u16>,
    /// The ports HTTP rules apply to: `None` = all of them (a Service: a port is HTTP when
    /// labels, names or rules say so); a ServiceEntry's ports say their protocol.
    pub http_ports: Option<Vec<u16>>,
}

/// Services by namespace and name, and ServiceEntry hosts by name, for host resolution.
pub(crate) struct HostIndex<'m> {
    services: BTreeMap<(&'m str, &'m str), &'m Service>,
    external: BTreeMap<String, &'m ExternalHost>,
}

impl<'m> HostIndex<'m> {
    pub fn new(services: &'m [Arc<Service>], external: &'m [ExternalHost]) -> Self {
        HostIndex {
            services: services
                .iter()
                .map(|s| ((s.namespace.as_str(), s.name.as_str()), &**s))
                .collect(),
            external: external
                .iter()
                .map(|e| (service_entry::host_key(&e.key.name), e))
                .collect(),
        }
    }

    /// The Service `host` names, else the ServiceEntry host it is.
    pub fn resolve(&self, host: &str, ns: &str) -> Option<ResolvedHost> {
        self.resolve_service(host, ns).or_else(|| {
            let name = host.split_once('/').map_or(host, |(_, h)| h);
            let e = self.external.get(&service_entry::host_key(name))?;
            Some(ResolvedHost {
                service: e.key.clone(),
                ports: e.ports.iter().map(|p| p.number).collect(),
                http_ports: Some(
                    e.ports
                        .iter()
                        .filter(|p| p.protocol == crate::routing::ExternalProtocol::Http)
                        .map(|p| p.number)
                        .collect(),
                ),
            })
        })
    }

    /// The Service `host` names, short names relative to `ns`.
    fn resolve_service(&self, host: &str, ns: &str) -> Option<ResolvedHost> {
        let host = host.trim_end_matches('.');
        let host = host.split_once('/').map_or(host, |(_, h)| h);
        if host.contains('*') {
            return None;
        }
        let parts: Vec<&str> = host.split('.').collect();
        let (name, namespace) = match parts.as_slice() {
            [name] => (*name, ns),
            [name, namespace] | [name, namespace, "svc"] => (*name, *namespace),
            [name, namespace, "svc", rest @ ..] if rest.join(".") == CLUSTER_DOMAIN => (*name, *namespace),
            _ => return None,
        };
        let svc = self.services.get(&(namespace, name))?;
        Some(ResolvedHost {
            service: ServiceKey::new(&svc.namespace, &svc.name),
            ports: svc
                .ports
                .iter()
                .filter(|p| p.protocol == L4::Tcp)
                .map(|p| p.port)
                .collect(),
            http_ports: None,
        })
    }
}

/// Creation time (absent last), then namespace/name.
fn order_key(m: &ObjectMeta) -> (bool, &str, &str, &str) {
    (
        m.creation_timestamp.is_none(),
        m.creation_timestamp.as_deref().unwrap_or(""),
        &m.namespace,
        &m.name,
    )
}

fn object_ref(kind: &str, m: &ObjectMeta) -> ObjectRef {
    ObjectRef::new(kind, &m.namespace, &m.name)
}

/// For each VirtualService (namespace, name), the original indices of its `http[]` rules that
/// validation left out: the validated form lacks them, so rule `k` of it is the `k`-th index
/// not in this set (rule names and problem paths use the index the user wrote).
fn dropped_http_rules(reports: &[ObjectReport]) -> BTreeMap<(&str, &str), BTreeSet<usize>> {
    let mut out: BTreeMap<(&str, &str), BTreeSet<usize>> = BTreeMap::new();
    for r in reports.iter().filter(|r| r.object.kind == Kind::VirtualService) {
        for p in &r.problems {
            if let Dropped::Part(part) = &p.dropped {
                let index = part
                    .strip_prefix("spec.http[")
                    .and_then(|rest| rest.strip_suffix(']'))
                    .and_then(|i| i.parse::<usize>().ok());
                if let Some(i) = index {
                    out.entry((&r.object.namespace, &r.object.name))
                        .or_default()
                        .insert(i);
                }
            }
        }
    }
    out
}

/// The original index of rule `k` of a validated object that lost `dropped`.
fn original_index(k: usize, dropped: Option<&BTreeSet<usize>>) -> usize {
    (0..)
        .filter(|i| dropped.is_none_or(|d| !d.contains(i)))
        .nth(k)
        .unwrap_or(k)
}

/// Lowers a validated configuration against the Services of the mesh.
pub fn lower(validated: &ValidatedConfig, services: &[Arc<Service>]) -> (RoutingModel, Vec<Problem>) {
    let config = &validated.config;
    let dropped = dropped_http_rules(&validated.reports);
    let mut problems = Vec::new();
    let mut model = RoutingModel::default();
    let external = service_entry::lower_service_entries(
        &config.service_entries,
        &HostIndex::new(services, &[]),
        &mut problems,
    );
    let hosts = HostIndex::new(services, &external);

    let mut drs: Vec<&DestinationRule> = config.destination_rules.iter().collect();
    drs.sort_by(|a, b| order_key(&a.metadata).cmp(&order_key(&b.metadata)));
    for dr in drs {
        let origin = object_ref("DestinationRule", &dr.metadata);
        let Some(host) = hosts.resolve(&dr.spec.host, &dr.metadata.namespace) else {
            problems.push(Problem::IstioRule {
                object: origin,
                path: "spec.host".into(),
                message: format!(
                    "host {:?} is neither a Service nor a ServiceEntry host (wildcards are not supported)",
                    dr.spec.host
                ),
            });
            continue;
        };
        let policy = destination_rule::lower_destination_rule(dr, &mut problems);
        match model.policies.get_mut(&host.service) {
            None => {
                model.policies.insert(host.service, policy);
            }
            Some(first) => {
                if policy.policy != Default::default() || !policy.ports.is_empty() {
                    problems.push(Problem::IstioConflict {
                        object: origin.clone(),
                        winner: first.origin.clone(),
                        message: format!(
                            "trafficPolicy for {:?} ignored: an earlier DestinationRule sets it",
                            dr.spec.host
                        ),
                    });
                }
                for s in policy.subsets {
                    if first.subset(&s.name).is_some() {
                        problems.push(Problem::IstioConflict {
                            object: origin.clone(),
                            winner: first.origin.clone(),
                            message: format!(
                                "subset {:?} ignored: an earlier DestinationRule defines it",
                                s.name
                            ),
                        });
                    } else {
                        first.subsets.push(s);
                    }
                }
            }
        }
    }

    let mut vss: Vec<&VirtualService> = config.virtual_services.iter().collect();
    vss.sort_by(|a, b| order_key(&a.metadata).cmp(&order_key(&b.metadata)));
    // (Service, port) -> the VirtualService whose catch-all rule ends its rule list.
    let mut closed: BTreeMap<(ServiceKey, u16), ObjectRef> = BTreeMap::new();
    let mut bound: Vec<&VirtualService> = Vec::new();
    let mut bound_rules: Vec<Vec<HttpRule>> = Vec::new();
    for v in vss {
        let origin = object_ref("VirtualService", &v.metadata);
        let gone = dropped.get(&(v.metadata.namespace.as_str(), v.metadata.name.as_str()));
        let mut lowered = Vec::new();
        for (k, rule) in v.spec.http.iter().enumerate() {
            let i = original_index(k, gone);
            match virtual_service::lower_rule(v, i, rule, &hosts) {
                Ok(r) => lowered.push(r),
                Err(reason) => problems.push(virtual_service::rule_problem(v, i, reason)),
            }
        }
        if v.spec.gateways.iter().any(|g| g != "mesh") {
            bound.push(v);
            bound_rules.push(gateway::gateway_rules(&lowered));
        }
        if !virtual_service::applies_to_mesh(v) {
            continue;
        }
        let mut targets = Vec::new();
        for h in &v.spec.hosts {
            match hosts.resolve(h, &v.metadata.namespace) {
                Some(r) => targets.push(r),
                None => problems.push(Problem::IstioRule {
                    object: origin.clone(),
                    path: "spec.hosts".into(),
                    message: format!("host {h:?} is neither a Service nor a ServiceEntry host; ignored"),
                }),
            }
        }
        let mut tcp = Vec::new();
        for (i, rule) in v.spec.tcp.iter().enumerate() {
            match virtual_service::lower_tcp_rule(v, rule, &hosts) {
                Ok(r) => tcp.push(r),
                Err(message) => problems.push(Problem::IstioRule {
                    object: origin.clone(),
                    path: format!("spec.tcp[{i}]"),
                    message,
                }),
            }
        }
        for t in &targets {
            for &port in &t.ports {
                let key = (t.service.clone(), port);
                let first = tcp
                    .iter()
                    .find(|(ports, _)| ports.as_ref().is_none_or(|ps| ps.contains(&port)));
                if let Some((_, route)) = first {
                    if let Some(earlier) = model.tcp.get(&key) {
                        problems.push(Problem::IstioConflict {
                            object: origin.clone(),
                            winner: earlier.origin.clone(),
                            message: format!(
                                "tcp route for port {port} ignored: an earlier VirtualService sets it"
                            ),
                        });
                    } else {
                        let mut route = route.clone();
                        for (d, _) in &mut route.destinations {
                            d.port = virtual_service::at_port(d.port, port);
                        }
                        model.tcp.insert(key.clone(), route);
                    }
                }
                if t.http_ports.as_ref().is_some_and(|h| !h.contains(&port)) {
                    continue; // not an HTTP port of a ServiceEntry
                }
                let rules: Vec<HttpRule> = lowered.iter().filter_map(|r| r.placed_on(port)).collect();
                if rules.is_empty() {
                    continue;
                }
                if let Some(winner) = closed.get(&key) {
                    problems.push(Problem::IstioConflict {
                        object: origin.clone(),
                        winner: winner.clone(),
                        message: format!(
                            "rules for {}.{} port {port} are unreachable: an earlier VirtualService ends with a rule matching every request",
                            t.service.name, t.service.namespace
                        ),
                    });
                    continue;
                }
                if rules.iter().any(HttpRule::is_catch_all) {
                    closed.insert(key.clone(), origin.clone());
                }
                model.http.entry(key).or_default().extend(rules);
            }
        }
    }
    gateway::lower_gateways(config, &bound, &bound_rules, &mut model, &mut problems);
    model.external = external;
    (model, problems)
}

/// An Istio percentage (0-100, fractions allowed) as parts per million.
pub(crate) fn percent(value: f64) -> Result<traffic_labels::Percent, String> {
    if !(0.0..=100.0).contains(&value) {
        return Err(format!("percentage {value} is outside 0-100"));
    }
    let ppm = (value * 10_000.0).round() as u32;
    traffic_labels::Percent::from_ppm(ppm).ok_or_else(|| format!("percentage {value} is outside 0-100"))
}
