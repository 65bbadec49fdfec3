//! A validated DestinationRule lowered into a [`DestinationPolicy`]: its traffic policy, port-level
//! settings and subsets (each subset's policy replacing the top-level one field by field).

use std::time::Duration;

use traffic_istio::destination_rule::{
    ConnectionPoolSettings, LoadBalancerSettings, OutlierDetection as IstioOutlier, SimpleLb, TrafficPolicy,
};
use traffic_istio::{DestinationRule, IstioDuration};

use crate::routing::{
    ClusterPolicy, ConnectionPool, DestinationPolicy, HashKey, LoadBalancer, OutlierDetection, Subset,
};
use crate::snapshot::ObjectRef;
use crate::translate::Problem;

/// The policy of `dr`; a setting that cannot be lowered is left out and reported.
pub(super) fn lower_destination_rule(dr: &DestinationRule, problems: &mut Vec<Problem>) -> DestinationPolicy {
    let origin = ObjectRef::new("DestinationRule", &dr.metadata.namespace, &dr.metadata.name);
    let mut report = |path: String, message: String| {
        problems.push(Problem::IstioRule {
            object: origin.clone(),
            path,
            message,
        })
    };
    let top = dr.spec.traffic_policy.as_ref();
    let policy = top
        .map(|p| cluster_policy(p, "spec.trafficPolicy", &mut report))
        .unwrap_or_default();
    let mut ports = std::collections::BTreeMap::new();
    for (i, pl) in top
        .map(|p| p.port_level_settings.as_slice())
        .unwrap_or(&[])
        .iter()
        .enumerate()
    {
        let path = format!("spec.trafficPolicy.portLevelSettings[{i}]");
        let Some(port) = pl.port.and_then(|p| p.number).and_then(|n| u16::try_from(n).ok()) else {
            report(path, "port.number is required".into());
            continue;
        };
        let p = ClusterPolicy {
            load_balancer: pl
                .load_balancer
                .as_ref()
                .and_then(|lb| load_balancer(lb, &format!("{path}.loadBalancer"), &mut report)),
            connection_pool: pl
                .connection_pool
                .as_ref()
                .and_then(|cp| connection_pool(cp, &format!("{path}.connectionPool"), &mut report)),
            outlier_detection: pl
                .outlier_detection
                .as_ref()
                .and_then(|od| outlier(od, &format!("{path}.outlierDetection"), &mut report)),
        };
        ports.insert(port, p);
    }
    let mut subsets = Vec::new();
    for (i, s) in dr.spec.subsets.iter().enumerate() {
        let path = format!("spec.subsets[{i}]");
        if s.name.is_empty() || s.name.contains('|') || subsets.iter().any(|x: &Subset| x.name == s.name) {
            report(
                path,
                format!("subset name {:?} is empty, has '|' or is defined twice", s.name),
            );
            continue;
        }
        let own = s
            .traffic_policy
            .as_ref()
            .map(|p| cluster_policy(p, &format!("{path}.trafficPolicy"), &mut report))
            .unwrap_or_default();
        subsets.push(Subset {
            name: s.name.clone(),
            labels: s.labels.clone(),
            policy: own.or(&policy),
        });
    }
    DestinationPolicy {
        origin: origin.clone(),
        policy,
        ports,
        subsets,
    }
}

fn cluster_policy(p: &TrafficPolicy, path: &str, report: &mut impl FnMut(String, String)) -> ClusterPolicy {
    ClusterPolicy {
        load_balancer: p
            .load_balancer
            .as_ref()
            .and_then(|lb| load_balancer(lb, &format!("{path}.loadBalancer"), report)),
        connection_pool: p
            .connection_pool
            .as_ref()
            .and_then(|cp| connection_pool(cp, &format!("{path}.connectionPool"), report)),
        outlier_detection: p
            .outlier_detection
            .as_ref()
            .and_then(|od| outlier(od, &format!("{path}.outlierDetection"), report)),
    }
}

fn load_balancer(
    lb: &LoadBalancerSettings,
    path: &str,
    report: &mut impl FnMut(String, String),
) -> Option<LoadBalancer> {
    if let Some(h) = &lb.consistent_hash {
        let key = if let Some(name) = &h.http_header_name {
            HashKey::Header(name.to_ascii_lowercase())
        } else if let Some(c) = &h.http_cookie {
            let ttl = match c.ttl.as_ref().map(IstioDuration::to_std).transpose() {
                Ok(t) => t.filter(|t| !t.is_zero()),
                Err(e) => {
                    report(format!("{path}.consistentHash.httpCookie.ttl"), e.to_string());
                    return None;
                }
            };
            HashKey::Cookie {
                name: c.name.clone(),
                ttl,
                path: c.path.clone(),
            }
        } else if h.use_source_ip == Some(true) {
            HashKey::SourceIp
        } else if let Some(q) = &h.http_query_parameter_name {
            HashKey::QueryParameter(q.clone())
        } else {
            report(format!("{path}.consistentHash"), "no hash key".into());
            return None;
        };
        return Some(LoadBalancer::ConsistentHash(key));
    }
    match lb.simple.as_ref()? {
        SimpleLb::Unspecified => None,
        SimpleLb::RoundRobin => Some(LoadBalancer::RoundRobin),
        SimpleLb::LeastRequest | SimpleLb::LeastConn => Some(LoadBalancer::LeastRequest),
        SimpleLb::Random => Some(LoadBalancer::Random),
        SimpleLb::Passthrough => Some(LoadBalancer::Passthrough),
        SimpleLb::Other(v) => {
            report(format!("{path}.simple"), format!("unknown value {v:?}"));
            None
        }
    }
}

/// A count: 0 or absent = unset (Istio's reading), negative or too large = reported.
fn count(v: Option<i64>, path: String, report: &mut impl FnMut(String, String)) -> Option<u32> {
    let v = v?;
    match u32::try_from(v) {
        Ok(0) => None,
        Ok(n) => Some(n),
        Err(_) => {
            report(path, format!("{v} is not a count"));
            None
        }
    }
}

fn duration(
    d: Option<&IstioDuration>,
    path: String,
    report: &mut impl FnMut(String, String),
) -> Option<Duration> {
    match d?.to_std() {
        Ok(t) if t.is_zero() => {
            report(path, "must be greater than 0".into());
            None
        }
        Ok(t) => Some(t),
        Err(e) => {
            report(path, e.to_string());
            None
        }
    }
}

fn connection_pool(
    cp: &ConnectionPoolSettings,
    path: &str,
    report: &mut impl FnMut(String, String),
) -> Option<ConnectionPool> {
    let tcp = cp.tcp.clone().unwrap_or_default();
    let http = cp.http.clone().unwrap_or_default();
    Some(ConnectionPool {
        max_connections: count(tcp.max_connections, format!("{path}.tcp.maxConnections"), report),
        connect_timeout: duration(
            tcp.connect_timeout.as_ref(),
            format!("{path}.tcp.connectTimeout"),
            report,
        ),
        max_pending_requests: count(
            http.http1_max_pending_requests,
            format!("{path}.http.http1MaxPendingRequests"),
            report,
        ),
        max_requests: count(
            http.http2_max_requests,
            format!("{path}.http.http2MaxRequests"),
            report,
        ),
        max_requests_per_connection: count(
            http.max_requests_per_connection,
            format!("{path}.http.maxRequestsPerConnection"),
            report,
        ),
        max_retries: count(http.max_retries, format!("{path}.http.maxRetries"), report),
    })
}

fn outlier(
    od: &IstioOutlier,
    path: &str,
    report: &mut impl FnMut(String, String),
) -> Option<OutlierDetection> {
    let percent = |v: Option<i64>, field: &str, report: &mut dyn FnMut(String, String)| match v {
        None => None,
        Some(n @ 0..=100) => Some(n as u32),
        Some(n) => {
            report(format!("{path}.{field}"), format!("{n} is not a percentage"));
            None
        }
    };
    let raw = |v: Option<i64>| v.and_then(|n| u32::try_from(n).ok());
    Some(OutlierDetection {
        consecutive_5xx: raw(od.consecutive_5xx_errors),
        // The 2018 `consecutiveErrors` meant gateway errors (Istio <= 1.6); validation maps it.
        consecutive_gateway_errors: raw(od.consecutive_gateway_errors).or(raw(od.consecutive_errors)),
        interval: duration(od.interval.as_ref(), format!("{path}.interval"), report),
        base_ejection_time: duration(
            od.base_ejection_time.as_ref(),
            format!("{path}.baseEjectionTime"),
            report,
        ),
        max_ejection_percent: percent(od.max_ejection_percent, "maxEjectionPercent", report),
        min_health_percent: percent(od.min_health_percent, "minHealthPercent", report),
    })
}
