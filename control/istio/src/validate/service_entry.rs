//! ServiceEntry validation. Units left out on an error: one port, one endpoint; `hosts`,
//! `location`, `resolution` and `addresses` concern the whole object.

use std::collections::BTreeSet;
use std::net::IpAddr;

use super::checks;
use super::problem::{Code, Problem, Sink};
use crate::service_entry::{Location, Resolution, ServiceEntry};

/// Protocols a ServiceEntry or Gateway port may name (compared case-insensitively).
pub(crate) const PROTOCOLS: &[&str] = &["HTTP", "HTTPS", "HTTP2", "GRPC", "TCP", "TLS", "MONGO"];

pub(crate) fn is_protocol(p: &str) -> bool {
    PROTOCOLS.iter().any(|k| k.eq_ignore_ascii_case(p))
}

/// An address or a CIDR (`10.0.0.0/8`).
fn is_address(a: &str) -> bool {
    match a.split_once('/') {
        Some((ip, len)) => ip.parse::<IpAddr>().is_ok_and(|ip| {
            len.parse::<u8>()
                .is_ok_and(|l| l <= if ip.is_ipv4() { 32 } else { 128 })
        }),
        None => a.parse::<IpAddr>().is_ok(),
    }
}

/// A CIDR covering more than one address (`10.0.0.0/8`; not `10.0.0.1/32`).
fn is_cidr_range(a: &str) -> bool {
    a.split_once('/').is_some_and(|(ip, len)| {
        let full = if ip.contains(':') { "128" } else { "32" };
        len != full
    })
}

/// Why `h` cannot be a ServiceEntry host: `*` alone (every host), a `namespace/` prefix, an empty
/// label, characters no DNS name has, or a wildcard that is not the leftmost label.
fn bad_host(h: &str) -> Option<String> {
    if h == "*" {
        return Some("host \"*\" would take every destination; name the hosts".into());
    }
    if h.contains('/') {
        return Some(format!(
            "host {h:?}: a namespace prefix is not allowed in a ServiceEntry"
        ));
    }
    let rest = h.strip_prefix("*.").unwrap_or(h);
    let labels_ok = !rest.is_empty()
        && rest.trim_end_matches('.').split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        });
    (!labels_ok || h.len() > 253)
        .then(|| format!("host {h:?} is not a DNS name (a leading `*.` is the only wildcard)"))
}

/// The object with invalid ports and endpoints removed (`None` when the object itself is
/// unusable), and its problems.
pub fn validate_service_entry(se: &ServiceEntry) -> (Option<ServiceEntry>, Vec<Problem>) {
    let mut problems = Vec::new();
    let mut top = Sink::default();
    let spec = &se.spec;
    if se.metadata.name.is_empty() {
        top.push(Code::MissingName, "metadata.name", "name is empty");
    }
    if spec.hosts.is_empty() {
        top.push(
            Code::MissingRequired,
            "spec.hosts",
            "at least one host is required",
        );
    }
    if spec.ports.is_empty() {
        top.push(
            Code::MissingRequired,
            "spec.ports",
            "at least one port is required",
        );
    }
    if let Some(Location::Other(v)) = &spec.location {
        top.push(
            Code::UnknownValue,
            "spec.location",
            format!("unknown value {v:?} (known: {})", Location::KNOWN.join(", ")),
        );
    }
    let resolution = spec.resolution.clone().unwrap_or(Resolution::None);
    match &resolution {
        Resolution::Other(v) => top.push(
            Code::UnknownValue,
            "spec.resolution",
            format!("unknown value {v:?} (known: {})", Resolution::KNOWN.join(", ")),
        ),
        Resolution::Dns | Resolution::DnsRoundRobin if spec.endpoints.is_empty() => {
            for (i, h) in spec.hosts.iter().enumerate() {
                if h.contains('*') {
                    top.push(
                        Code::InvalidResolution,
                        format!("spec.hosts[{i}]"),
                        format!("wildcard host {h:?} cannot be resolved by DNS"),
                    );
                }
            }
        }
        Resolution::Dns | Resolution::DnsRoundRobin => {}
        Resolution::Static if spec.endpoints.is_empty() && spec.workload_selector.is_none() => {
            top.push(
                Code::InvalidResolution,
                "spec.endpoints",
                "STATIC resolution needs endpoints",
            );
        }
        _ => {}
    }
    if resolution == Resolution::DnsRoundRobin && spec.endpoints.len() > 1 {
        top.push(
            Code::InvalidResolution,
            "spec.endpoints",
            format!(
                "DNS_ROUND_ROBIN uses one name (Envoy LOGICAL_DNS); {} endpoints given",
                spec.endpoints.len()
            ),
        );
    }
    for (i, h) in spec.hosts.iter().enumerate() {
        if let Some(why) = bad_host(h) {
            top.push(Code::InvalidHost, format!("spec.hosts[{i}]"), why);
        }
    }
    for (i, a) in spec.addresses.iter().enumerate() {
        if !is_address(a) {
            top.push(
                Code::UnknownValue,
                format!("spec.addresses[{i}]"),
                format!("{a:?} is not an IP address or CIDR"),
            );
        } else if is_cidr_range(a) && matches!(resolution, Resolution::Dns | Resolution::DnsRoundRobin) {
            top.push(
                Code::InvalidResolution,
                format!("spec.addresses[{i}]"),
                format!("CIDR {a:?} with DNS resolution: a DNS cluster has no range to answer for (use NONE or STATIC)"),
            );
        }
    }
    if spec.workload_selector.is_some() {
        top.push(
            Code::Unsupported,
            "spec.workloadSelector",
            "workloadSelector is not supported; ignored",
        );
    }
    let object_ok = !top.has_errors();
    top.finish(None, &mut problems);
    if !object_ok {
        return (None, problems);
    }
    let mut out = se.clone();
    out.spec.ports.clear();
    let mut numbers = BTreeSet::new();
    for (i, port) in spec.ports.iter().enumerate() {
        let path = format!("spec.ports[{i}]");
        let mut sink = Sink::default();
        if checks::port(&mut sink, &format!("{path}.number"), port.number) && !numbers.insert(port.number) {
            sink.push(
                Code::DuplicatePort,
                format!("{path}.number"),
                format!("port {} is listed twice; the first is kept", port.number),
            );
        }
        match port.protocol.as_deref() {
            Some(p) if !is_protocol(p) => sink.push(
                Code::UnknownValue,
                format!("{path}.protocol"),
                format!("unknown protocol {p:?} (known: {})", PROTOCOLS.join(", ")),
            ),
            _ => {}
        }
        if let Some(t) = port.target_port {
            checks::port(&mut sink, &format!("{path}.targetPort"), t);
        }
        let ok = !sink.has_errors();
        sink.finish(Some(&path), &mut problems);
        if ok {
            out.spec.ports.push(port.clone());
        }
    }
    out.spec.endpoints.clear();
    for (i, ep) in spec.endpoints.iter().enumerate() {
        let path = format!("spec.endpoints[{i}]");
        let mut sink = Sink::default();
        match resolution {
            Resolution::None => sink.push(
                Code::InvalidResolution,
                &path,
                "endpoints are not used with resolution NONE",
            ),
            Resolution::Static
                if ep.address.parse::<IpAddr>().is_err() && !ep.address.starts_with("unix://") =>
            {
                sink.push(
                    Code::InvalidResolution,
                    format!("{path}.address"),
                    format!("{:?} is not an IP address (resolution STATIC)", ep.address),
                )
            }
            _ if ep.address.is_empty() => sink.push(
                Code::MissingRequired,
                format!("{path}.address"),
                "address is empty",
            ),
            _ => {}
        }
        for (name, p) in &ep.ports {
            checks::port(&mut sink, &format!("{path}.ports.{name}"), *p);
        }
        checks::non_negative(&mut sink, &format!("{path}.weight"), ep.weight);
        let ok = !sink.has_errors();
        sink.finish(Some(&path), &mut problems);
        if ok {
            out.spec.endpoints.push(ep.clone());
        }
    }
    (Some(out), problems)
}
