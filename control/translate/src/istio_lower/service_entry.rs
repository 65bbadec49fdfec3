//! ServiceEntry lowering: each host of a validated ServiceEntry becomes one
//! [`ExternalHost`] of the routing model, addressed like a Service by (entry namespace, host).
//!
//! - Host names compare case-insensitively (without a trailing dot); the first entry for a host
//!   (creation time, then namespace/name) wins, later ones are reported. A host that names a
//!   Kubernetes Service stays the Service's (reported).
//! - A port that Envoy would match on exactly the same terms (port and `addresses`) as an earlier
//!   one is left out of the later host and reported, unless both are HTTP (one chain, a virtual
//!   host each): two filter chains with the same match would make Envoy reject the listener.
//! - `HTTP`, `HTTP2`, `GRPC` ports are HTTP (virtual host by Host header); `HTTPS`, `TLS` are
//!   matched by SNI; `TCP`, `MONGO` are opaque TCP.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use traffic_istio::service_entry::{Location as IstioLocation, Resolution as IstioResolution};
use traffic_istio::ServiceEntry;

use super::{object_ref, order_key, HostIndex};
use crate::routing::{
    ExternalEndpoint, ExternalHost, ExternalPort, ExternalProtocol, Location, Resolution, ServiceKey,
};
use crate::translate::Problem;

/// What an outbound filter chain of an HTTP or TCP port matches on: port and addresses.
type ChainMatch = (u16, Vec<(IpAddr, u8)>);

/// How a ServiceEntry port's protocol is handled (validation already refused unknown ones).
pub(crate) fn protocol(p: Option<&str>) -> ExternalProtocol {
    match p.map(str::to_ascii_uppercase).as_deref() {
        Some("HTTP" | "HTTP2" | "GRPC") => ExternalProtocol::Http,
        Some("HTTPS" | "TLS") => ExternalProtocol::Tls,
        // TCP, MONGO, and Istio's default for a port without protocol.
        _ => ExternalProtocol::Tcp,
    }
}

/// `10.0.0.1` or `10.0.0.0/8` (validated already) as (address, prefix length).
fn cidr(a: &str) -> Option<(IpAddr, u8)> {
    let (ip, len) = match a.split_once('/') {
        Some((ip, len)) => (ip.parse::<IpAddr>().ok()?, Some(len.parse::<u8>().ok()?)),
        None => (a.parse::<IpAddr>().ok()?, None),
    };
    let full = if ip.is_ipv4() { 32 } else { 128 };
    Some((ip, len.unwrap_or(full).min(full)))
}

/// `region/zone/sub_zone`, missing parts empty.
fn locality(l: Option<&str>) -> (String, String, String) {
    let mut parts = l.unwrap_or("").splitn(3, '/').map(str::to_string);
    (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    )
}

/// The normalized form hosts are compared in.
pub(crate) fn host_key(h: &str) -> String {
    h.trim_end_matches('.').to_ascii_lowercase()
}

/// Lowers validated ServiceEntries (any order) into external hosts, in precedence order.
pub(super) fn lower_service_entries(
    entries: &[ServiceEntry],
    services: &HostIndex<'_>,
    problems: &mut Vec<Problem>,
) -> Vec<ExternalHost> {
    let mut sorted: Vec<&ServiceEntry> = entries.iter().collect();
    sorted.sort_by(|a, b| order_key(&a.metadata).cmp(&order_key(&b.metadata)));
    let mut out: Vec<ExternalHost> = Vec::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    // (port, addresses) of HTTP and TCP ports -> the first host with it, whether HTTP.
    let mut matches: BTreeMap<ChainMatch, (usize, bool)> = BTreeMap::new();
    for se in sorted {
        let origin = object_ref("ServiceEntry", &se.metadata);
        let spec = &se.spec;
        let mut addresses: Vec<(IpAddr, u8)> = spec.addresses.iter().filter_map(|a| cidr(a)).collect();
        addresses.sort();
        addresses.dedup();
        let resolution = match spec.resolution {
            None | Some(IstioResolution::None) | Some(IstioResolution::Other(_)) => Resolution::None,
            Some(IstioResolution::Static) => Resolution::Static,
            Some(IstioResolution::Dns) => Resolution::Dns,
            Some(IstioResolution::DnsRoundRobin) => Resolution::DnsRoundRobin,
        };
        let location = match spec.location {
            Some(IstioLocation::MeshInternal) => Location::MeshInternal,
            _ => Location::MeshExternal,
        };
        let ports: Vec<ExternalPort> = spec
            .ports
            .iter()
            .filter_map(|p| {
                Some(ExternalPort {
                    number: u16::try_from(p.number).ok()?,
                    name: p.name.clone().unwrap_or_else(|| p.number.to_string()),
                    target_port: p.target_port.and_then(|t| u16::try_from(t).ok()),
                    protocol: protocol(p.protocol.as_deref()),
                })
            })
            .collect();
        let endpoints: Vec<ExternalEndpoint> = spec
            .endpoints
            .iter()
            .map(|e| ExternalEndpoint {
                address: e.address.clone(),
                ports: e
                    .ports
                    .iter()
                    .filter_map(|(k, v)| Some((k.clone(), u16::try_from(*v).ok()?)))
                    .collect(),
                labels: e.labels.clone(),
                weight: e.weight.and_then(|w| u32::try_from(w).ok()).filter(|w| *w > 0),
                locality: locality(e.locality.as_deref()),
            })
            .collect();
        let mut hosts_done = BTreeSet::new();
        for (i, host) in spec.hosts.iter().enumerate() {
            let path = format!("spec.hosts[{i}]");
            let normalized = host_key(host);
            if !hosts_done.insert(normalized.clone()) {
                continue; // listed twice in one entry
            }
            if let Some(r) = services.resolve(host, &se.metadata.namespace) {
                problems.push(Problem::IstioRule {
                    object: origin.clone(),
                    path,
                    message: format!(
                        "host {host:?} is the Kubernetes Service {}/{}, which keeps its own endpoints; ignored",
                        r.service.namespace, r.service.name
                    ),
                });
                continue;
            }
            if let Some(&first) = seen.get(&normalized) {
                problems.push(Problem::IstioConflict {
                    object: origin.clone(),
                    winner: out[first].origin.clone(),
                    message: format!("host {host:?} ignored: an earlier ServiceEntry defines it"),
                });
                continue;
            }
            let index = out.len();
            let mut kept = Vec::new();
            for p in &ports {
                // TLS ports are told apart by SNI (the host); HTTP ports on the same match share
                // one chain (virtual hosts by Host header); an opaque TCP port shares with nothing.
                if p.protocol != ExternalProtocol::Tls {
                    let key = (p.number, addresses.clone());
                    let http = p.protocol == ExternalProtocol::Http;
                    match matches.get(&key) {
                        Some(&(_, true)) if http => {}
                        Some(&(other, _)) => {
                            problems.push(Problem::IstioConflict {
                                object: origin.clone(),
                                winner: out[other].origin.clone(),
                                message: format!(
                                    "port {} of {host:?} ignored: {:?} already takes connections to port {} {}",
                                    p.number,
                                    out[other].key.name,
                                    p.number,
                                    if addresses.is_empty() {
                                        "at any address (give the entries addresses)"
                                    } else {
                                        "at the same addresses"
                                    }
                                ),
                            });
                            continue;
                        }
                        None => {
                            matches.insert(key, (index, http));
                        }
                    }
                }
                kept.push(p.clone());
            }
            seen.insert(normalized, index);
            out.push(ExternalHost {
                origin: origin.clone(),
                key: ServiceKey::new(&se.metadata.namespace, host.trim_end_matches('.')),
                addresses: addresses.clone(),
                ports: kept,
                location,
                resolution,
                endpoints: endpoints.clone(),
            });
        }
    }
    out
}
