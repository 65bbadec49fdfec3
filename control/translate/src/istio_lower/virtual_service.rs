//! A validated VirtualService's `http[]` rules lowered into [`HttpRule`]s of the Service ports its
//! `hosts` name (mesh sidecars only: `gateways` empty or containing `mesh`).

use std::time::Duration;

use traffic_istio::virtual_service::{
    self as vs, HeaderOperations as IstioHeaderOps, Headers, HttpMatchRequest, HttpRoute,
};
use traffic_istio::VirtualService;

use super::{percent, HostIndex, ResolvedHost};
use crate::routing::{
    Destination, Fault, HeaderMatch, HeaderOperations, HeaderOps, HttpAction, HttpRule, Mirror,
    QueryParamMatch, Redirect, RequestMatch, Retries, Rewrite, StringMatch, WeightedDestination,
};
use crate::snapshot::ObjectRef;
use crate::translate::Problem;

/// A rule before it is placed on ports: its matches with the port each one asks for.
pub(super) struct LoweredRule {
    pub rule: HttpRule,
    /// `match[i].port` for each entry of `rule.matches` (`None`: any port).
    pub match_ports: Vec<Option<u16>>,
}

impl LoweredRule {
    /// The rule as it applies to `port`, or `None` when none of its matches is for that port.
    pub fn for_port(&self, port: u16) -> Option<HttpRule> {
        if self.rule.matches.is_empty() {
            return Some(self.rule.clone());
        }
        let matches: Vec<RequestMatch> = self
            .rule
            .matches
            .iter()
            .zip(&self.match_ports)
            .filter(|(_, p)| p.is_none_or(|p| p == port))
            .map(|(m, _)| m.clone())
            .collect();
        if matches.is_empty() {
            return None;
        }
        let mut rule = self.rule.clone();
        rule.matches = matches;
        Some(rule)
    }

    /// [`LoweredRule::for_port`], with destinations that name no port (on a host with several)
    /// sent to `port`, as Istio does.
    pub fn placed_on(&self, port: u16) -> Option<HttpRule> {
        let mut rule = self.for_port(port)?;
        if let HttpAction::Route(ds) = &mut rule.action {
            for d in ds {
                d.destination.port = at_port(d.destination.port, port);
            }
        }
        for m in &mut rule.mirrors {
            m.destination.port = at_port(m.destination.port, port);
        }
        Some(rule)
    }
}

/// A destination port as placed on `port`: 0 (none named, several to choose from) is `port`.
pub(super) fn at_port(destination_port: u16, port: u16) -> u16 {
    if destination_port == 0 {
        port
    } else {
        destination_port
    }
}

/// Whether the VirtualService applies to mesh sidecars.
pub(super) fn applies_to_mesh(v: &VirtualService) -> bool {
    v.spec.gateways.is_empty() || v.spec.gateways.iter().any(|g| g == "mesh")
}

/// Lowers rule `index` of `v`; `Err` says why it is left out.
pub(super) fn lower_rule(
    v: &VirtualService,
    index: usize,
    rule: &HttpRoute,
    hosts: &HostIndex<'_>,
) -> Result<LoweredRule, String> {
    let ns = &v.metadata.namespace;
    let origin = ObjectRef::new("VirtualService", ns, &v.metadata.name);
    let name = match &rule.name {
        Some(n) => format!("{ns}/{}/{index}/{n}", v.metadata.name),
        None => format!("{ns}/{}/{index}", v.metadata.name),
    };
    let mut matches = Vec::new();
    let mut match_ports = Vec::new();
    for m in &rule.matches {
        matches.push(request_match(m)?);
        match_ports.push(m.port.and_then(|p| u16::try_from(p).ok()));
    }

    let action = if let Some(r) = &rule.redirect {
        HttpAction::Redirect(Redirect {
            uri: r.uri.clone(),
            authority: r.authority.clone(),
            port: r.port.and_then(|p| u16::try_from(p).ok()),
            scheme: r.scheme.clone(),
            code: r.redirect_code.and_then(|c| u32::try_from(c).ok()).unwrap_or(301),
        })
    } else if let Some(d) = &rule.direct_response {
        HttpAction::DirectResponse {
            status: u32::try_from(d.status).map_err(|_| format!("bad status {}", d.status))?,
            body: d.body.as_ref().and_then(|b| b.string.clone()),
        }
    } else {
        let single = rule.route.len() == 1;
        let mut destinations = Vec::new();
        for r in &rule.route {
            let weight = match r.weight {
                None if single => 100,
                None => 0,
                Some(w) => u32::try_from(w).map_err(|_| format!("bad weight {w}"))?,
            };
            if weight == 0 {
                continue;
            }
            destinations.push(WeightedDestination {
                destination: destination(&r.destination, ns, hosts)?,
                weight,
                headers: headers(r.headers.as_ref()),
            });
        }
        if destinations.is_empty() {
            return Err("no destination with a weight above 0".to_string());
        }
        HttpAction::Route(destinations)
    };

    let duration = |d: &traffic_istio::IstioDuration| d.to_std().map_err(|e| e.to_string());
    let timeout = rule.timeout.as_ref().map(duration).transpose()?;
    let retries = rule.retries.as_ref().map(|r| retries(r, duration)).transpose()?;
    let fault = rule.fault.as_ref().map(|f| fault(f, duration)).transpose()?;
    let mut mirrors = Vec::new();
    for m in &rule.mirrors {
        mirrors.push(Mirror {
            destination: destination(&m.destination, ns, hosts)?,
            percentage: m.percentage.map(|p| percent(p.value)).transpose()?,
        });
    }
    if let Some(m) = &rule.mirror {
        // Validation moves `mirror` into `mirrors`; an unvalidated object still works.
        if rule.mirrors.is_empty() {
            mirrors.push(Mirror {
                destination: destination(m, ns, hosts)?,
                percentage: rule.mirror_percentage.map(|p| percent(p.value)).transpose()?,
            });
        }
    }
    let rewrite = rule
        .rewrite
        .as_ref()
        .map(|r| Rewrite {
            uri: r.uri.clone(),
            authority: r.authority.clone(),
        })
        .unwrap_or_default();
    Ok(LoweredRule {
        rule: HttpRule {
            origin,
            name,
            matches,
            action,
            timeout,
            retries,
            fault,
            tracing: None,
            hash: Vec::new(),
            mirrors,
            rewrite,
            headers: headers(rule.headers.as_ref()),
        },
        match_ports,
    })
}

/// `tcp[index]` of `v`: the ports it applies to (`None`: every port) and its destinations.
pub(super) fn lower_tcp_rule(
    v: &VirtualService,
    rule: &vs::TcpRoute,
    hosts: &HostIndex<'_>,
) -> Result<(Option<Vec<u16>>, crate::routing::TcpRoute), String> {
    let ns = &v.metadata.namespace;
    let ports: Vec<u16> = rule
        .matches
        .iter()
        .filter_map(|m| m.port.and_then(|p| u16::try_from(p).ok()))
        .collect();
    let any_port = rule.matches.is_empty() || rule.matches.iter().any(|m| m.port.is_none());
    let single = rule.route.len() == 1;
    let mut destinations = Vec::new();
    for r in &rule.route {
        let weight = match r.weight {
            None if single => 100,
            None => 0,
            Some(w) => u32::try_from(w).map_err(|_| format!("bad weight {w}"))?,
        };
        if weight > 0 {
            destinations.push((destination(&r.destination, ns, hosts)?, weight));
        }
    }
    if destinations.is_empty() {
        return Err("no destination with a weight above 0".to_string());
    }
    Ok((
        (!any_port).then_some(ports),
        crate::routing::TcpRoute {
            origin: ObjectRef::new("VirtualService", ns, &v.metadata.name),
            destinations,
        },
    ))
}

fn destination(d: &vs::Destination, ns: &str, hosts: &HostIndex<'_>) -> Result<Destination, String> {
    let ResolvedHost { service, ports, .. } = hosts.resolve(&d.host, ns).ok_or_else(|| {
        format!(
            "destination host {:?} is not a Service or ServiceEntry host",
            d.host
        )
    })?;
    let port = match d.port.and_then(|p| p.number) {
        Some(n) => {
            let n = u16::try_from(n).map_err(|_| format!("bad port {n}"))?;
            if !ports.contains(&n) {
                return Err(format!("destination {:?} has no port {n}", d.host));
            }
            n
        }
        None => match ports.as_slice() {
            [only] => *only,
            // Several: the port of the request, resolved when the rule is placed on a port
            // (`LoweredRule::placed_on`); a rule never placed (a Gateway's) is reported then.
            _ => 0,
        },
    };
    Ok(Destination {
        service,
        port,
        subset: d.subset.clone().filter(|s| !s.is_empty()),
    })
}

fn string_match(m: &vs::StringMatch) -> Option<StringMatch> {
    if let Some(s) = &m.exact {
        Some(StringMatch::Exact(s.clone()))
    } else if let Some(s) = &m.prefix {
        Some(StringMatch::Prefix(s.clone()))
    } else {
        m.regex.as_ref().map(|s| StringMatch::Regex(s.clone()))
    }
}

fn request_match(m: &HttpMatchRequest) -> Result<RequestMatch, String> {
    let required = |name: &str, v: &Option<vs::StringMatch>| -> Result<Option<StringMatch>, String> {
        match v {
            None => Ok(None),
            Some(v) => string_match(v)
                .map(Some)
                .ok_or_else(|| format!("{name}: one of exact, prefix, regex is required")),
        }
    };
    let mut headers: Vec<HeaderMatch> = m
        .headers
        .iter()
        .map(|(name, v)| HeaderMatch {
            name: name.to_ascii_lowercase(),
            value: string_match(v),
            invert: false,
        })
        .collect();
    headers.extend(m.without_headers.iter().map(|(name, v)| HeaderMatch {
        name: name.to_ascii_lowercase(),
        value: string_match(v),
        invert: true,
    }));
    Ok(RequestMatch {
        uri: required("uri", &m.uri)?,
        ignore_uri_case: m.ignore_uri_case == Some(true),
        headers,
        query_params: m
            .query_params
            .iter()
            .map(|(name, v)| QueryParamMatch {
                name: name.clone(),
                value: string_match(v),
            })
            .collect(),
        method: required("method", &m.method)?,
        authority: required("authority", &m.authority)?,
        source_labels: m.source_labels.clone(),
        source_namespace: m.source_namespace.clone().filter(|n| !n.is_empty()),
    })
}

fn retries(
    r: &vs::HttpRetry,
    duration: impl Fn(&traffic_istio::IstioDuration) -> Result<Duration, String>,
) -> Result<Retries, String> {
    let mut out = Retries {
        attempts: r
            .attempts
            .map(|a| u32::try_from(a).map_err(|_| format!("bad attempts {a}")))
            .transpose()?
            .unwrap_or(0),
        per_try_timeout: r.per_try_timeout.as_ref().map(&duration).transpose()?,
        retry_other_hosts: true,
        ..Default::default()
    };
    for cond in r.retry_on.iter().flat_map(|s| s.split(',')).map(str::trim) {
        if cond.is_empty() {
            continue;
        }
        match cond.parse::<u32>() {
            Ok(code) => out.status_codes.push(code),
            Err(_) => out.retry_on.push(cond.to_string()),
        }
    }
    Ok(out)
}

fn fault(
    f: &vs::HttpFaultInjection,
    duration: impl Fn(&traffic_istio::IstioDuration) -> Result<Duration, String>,
) -> Result<Fault, String> {
    // No percentage at all: every request (validation maps the integer `percent` first).
    let pct =
        |p: Option<traffic_istio::Percent>, legacy: Option<i64>| -> Result<traffic_labels::Percent, String> {
            match (p, legacy) {
                (Some(p), _) => percent(p.value),
                (None, Some(n)) => percent(n as f64),
                (None, None) => Ok(traffic_labels::Percent::HUNDRED),
            }
        };
    let delay = match &f.delay {
        Some(d) => match &d.fixed_delay {
            Some(t) => Some((duration(t)?, pct(d.percentage, d.percent)?)),
            None => return Err("fault.delay without fixedDelay".to_string()),
        },
        None => None,
    };
    let abort = match &f.abort {
        Some(a) => match a.http_status {
            Some(s) => Some((
                u32::try_from(s).map_err(|_| format!("bad httpStatus {s}"))?,
                pct(a.percentage, a.percent)?,
            )),
            None => return Err("fault.abort without httpStatus (grpcStatus is not supported)".to_string()),
        },
        None => None,
    };
    Ok(Fault { delay, abort })
}

fn header_ops(h: Option<&IstioHeaderOps>) -> HeaderOperations {
    let Some(h) = h else {
        return HeaderOperations::default();
    };
    HeaderOperations {
        set: h.set.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        add: h.add.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        remove: h.remove.clone(),
    }
}

fn headers(h: Option<&Headers>) -> HeaderOps {
    HeaderOps {
        request: header_ops(h.and_then(|h| h.request.as_ref())),
        response: header_ops(h.and_then(|h| h.response.as_ref())),
    }
}

/// Problems the translator reports for a rule left out here.
pub(super) fn rule_problem(v: &VirtualService, index: usize, reason: String) -> Problem {
    Problem::IstioRule {
        object: ObjectRef::new("VirtualService", &v.metadata.namespace, &v.metadata.name),
        path: format!("spec.http[{index}]"),
        message: reason,
    }
}
