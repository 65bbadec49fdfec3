//! DestinationRule validation. Units left out on an error: a subset (with its policy), one
//! `portLevelSettings[]` entry, or one setting (`loadBalancer`, `connectionPool`,
//! `outlierDetection`) of the top-level `trafficPolicy`.
//!
//! Normalized in the validated form: `LEAST_CONN` → `LEAST_REQUEST`;
//! `outlierDetection.consecutiveErrors` → `consecutiveGatewayErrors` (when that is not set itself),
//! which is what Istio ≤ 1.6 did with it (ejection after N consecutive 502/503/504 or connection
//! failures; Istio ≥ 1.7 ignores the field, so a 2018 rule silently gets Envoy's defaults);
//! `consistentHash.minimumRingSize` → `consistentHash.ringHash.minimumRingSize`.

use std::collections::BTreeSet;

use super::checks::{self, Zero};
use super::problem::{Code, Problem, Sink};
use crate::destination_rule::{
    ConnectionPoolSettings, DestinationRule, H2UpgradePolicy, LoadBalancerSettings, OutlierDetection,
    RingHash, SimpleLb, TrafficPolicy,
};

/// The object with invalid parts removed and deprecated fields normalized (`None` when the object
/// itself is unusable), and its problems.
pub fn validate_destination_rule(dr: &DestinationRule) -> (Option<DestinationRule>, Vec<Problem>) {
    let mut problems = Vec::new();
    let mut top = Sink::default();
    if dr.metadata.name.is_empty() {
        top.push(Code::MissingName, "metadata.name", "name is empty");
    }
    if dr.spec.host.trim().is_empty() {
        top.push(Code::MissingRequired, "spec.host", "host is required");
    }
    if dr.spec.workload_selector.is_some() {
        top.push(
            Code::Unsupported,
            "spec.workloadSelector",
            "workloadSelector is not supported; the rule applies to every client",
        );
    }
    let object_ok = !top.has_errors();
    top.finish(None, &mut problems);
    if !object_ok {
        return (None, problems);
    }
    let mut out = dr.clone();
    if let Some(tp) = &mut out.spec.traffic_policy {
        top_level_policy(tp, "spec.trafficPolicy", &mut problems);
    }
    out.spec.subsets.clear();
    let mut names = BTreeSet::new();
    for (i, subset) in dr.spec.subsets.iter().enumerate() {
        let path = format!("spec.subsets[{i}]");
        let mut sink = Sink::default();
        let mut subset = subset.clone();
        if subset.name.is_empty() {
            sink.push(
                Code::InvalidSubset,
                format!("{path}.name"),
                "subset name is empty",
            );
        } else if !names.insert(subset.name.clone()) {
            sink.push(
                Code::InvalidSubset,
                format!("{path}.name"),
                format!("subset {:?} is defined twice; the first is kept", subset.name),
            );
        }
        if let Some(tp) = &mut subset.traffic_policy {
            whole_policy(&mut sink, &format!("{path}.trafficPolicy"), tp);
        }
        let ok = !sink.has_errors();
        sink.finish(Some(&path), &mut problems);
        if ok {
            out.spec.subsets.push(subset);
        }
    }
    (Some(out), problems)
}

/// The top level: each setting and each port-level entry on its own.
fn top_level_policy(tp: &mut TrafficPolicy, path: &str, problems: &mut Vec<Problem>) {
    let mut keep = |part: &str, check: &mut dyn FnMut(&mut Sink)| {
        let mut sink = Sink::default();
        check(&mut sink);
        let ok = !sink.has_errors();
        sink.finish(Some(&format!("{path}.{part}")), problems);
        ok
    };
    if let Some(lb) = &mut tp.load_balancer {
        let p = format!("{path}.loadBalancer");
        if !keep("loadBalancer", &mut |s| load_balancer(s, &p, lb)) {
            tp.load_balancer = None;
        }
    }
    if let Some(cp) = &tp.connection_pool {
        let p = format!("{path}.connectionPool");
        if !keep("connectionPool", &mut |s| connection_pool(s, &p, cp)) {
            tp.connection_pool = None;
        }
    }
    if let Some(od) = &mut tp.outlier_detection {
        let p = format!("{path}.outlierDetection");
        if !keep("outlierDetection", &mut |s| outlier_detection(s, &p, od)) {
            tp.outlier_detection = None;
        }
    }
    let mut unsupported = Sink::default();
    other_policy_fields(&mut unsupported, path, tp);
    unsupported.finish(None, problems);
    let entries = std::mem::take(&mut tp.port_level_settings);
    for (i, mut entry) in entries.into_iter().enumerate() {
        let p = format!("{path}.portLevelSettings[{i}]");
        let mut sink = Sink::default();
        port_level(&mut sink, &p, &mut entry);
        let ok = !sink.has_errors();
        sink.finish(Some(&p), problems);
        if ok {
            tp.port_level_settings.push(entry);
        }
    }
}

/// A subset's policy: everything in one unit.
fn whole_policy(sink: &mut Sink, path: &str, tp: &mut TrafficPolicy) {
    if let Some(lb) = &mut tp.load_balancer {
        load_balancer(sink, &format!("{path}.loadBalancer"), lb);
    }
    if let Some(cp) = &tp.connection_pool {
        connection_pool(sink, &format!("{path}.connectionPool"), cp);
    }
    if let Some(od) = &mut tp.outlier_detection {
        outlier_detection(sink, &format!("{path}.outlierDetection"), od);
    }
    other_policy_fields(sink, path, tp);
    for (i, entry) in tp.port_level_settings.iter_mut().enumerate() {
        port_level(sink, &format!("{path}.portLevelSettings[{i}]"), entry);
    }
}

fn other_policy_fields(sink: &mut Sink, path: &str, tp: &TrafficPolicy) {
    for (field, set) in [
        ("tls", tp.tls.is_some()),
        ("tunnel", tp.tunnel.is_some()),
        ("proxyProtocol", tp.proxy_protocol.is_some()),
    ] {
        if set {
            sink.push(
                Code::Unsupported,
                format!("{path}.{field}"),
                format!("{field} is not translated; ignored"),
            );
        }
    }
}

fn port_level(sink: &mut Sink, path: &str, e: &mut crate::destination_rule::PortTrafficPolicy) {
    match e.port.and_then(|p| p.number) {
        Some(n) => {
            checks::port(sink, &format!("{path}.port.number"), n);
        }
        None => sink.push(
            Code::InvalidPort,
            format!("{path}.port.number"),
            "port.number is required",
        ),
    }
    if let Some(lb) = &mut e.load_balancer {
        load_balancer(sink, &format!("{path}.loadBalancer"), lb);
    }
    if let Some(cp) = &e.connection_pool {
        connection_pool(sink, &format!("{path}.connectionPool"), cp);
    }
    if let Some(od) = &mut e.outlier_detection {
        outlier_detection(sink, &format!("{path}.outlierDetection"), od);
    }
    if e.tls.is_some() {
        sink.push(
            Code::Unsupported,
            format!("{path}.tls"),
            "tls is not translated; ignored",
        );
    }
}

fn load_balancer(sink: &mut Sink, path: &str, lb: &mut LoadBalancerSettings) {
    match &lb.simple {
        Some(SimpleLb::LeastConn) => {
            sink.push(
                Code::Deprecated,
                format!("{path}.simple"),
                "LEAST_CONN is deprecated; read as LEAST_REQUEST",
            );
            lb.simple = Some(SimpleLb::LeastRequest);
        }
        Some(SimpleLb::Other(v)) => sink.push(
            Code::UnknownValue,
            format!("{path}.simple"),
            format!("unknown value {v:?} (known: {})", SimpleLb::KNOWN.join(", ")),
        ),
        _ => {}
    }
    if lb.simple.is_some() && lb.consistent_hash.is_some() {
        sink.push(
            Code::InvalidLoadBalancer,
            path,
            "only one of simple, consistentHash may be set",
        );
    }
    if let Some(ch) = &mut lb.consistent_hash {
        let cp = format!("{path}.consistentHash");
        let keys = [
            ch.http_header_name.is_some(),
            ch.http_cookie.is_some(),
            ch.use_source_ip == Some(true),
            ch.http_query_parameter_name.is_some(),
        ]
        .iter()
        .filter(|k| **k)
        .count();
        if keys != 1 {
            sink.push(
                Code::InvalidLoadBalancer,
                &cp,
                "exactly one of httpHeaderName, httpCookie, useSourceIp, httpQueryParameterName must be set",
            );
        }
        if let Some(h) = &ch.http_header_name {
            checks::header_name(sink, &format!("{cp}.httpHeaderName"), h);
        }
        if let Some(c) = &ch.http_cookie {
            if c.name.is_empty() {
                sink.push(
                    Code::InvalidLoadBalancer,
                    format!("{cp}.httpCookie.name"),
                    "cookie name is empty",
                );
            }
            checks::opt_duration(sink, &format!("{cp}.httpCookie.ttl"), &c.ttl, Zero::Allowed);
        }
        if ch.ring_hash.is_some() && ch.maglev.is_some() {
            sink.push(
                Code::InvalidLoadBalancer,
                &cp,
                "only one of ringHash, maglev may be set",
            );
        }
        if let Some(n) = ch.minimum_ring_size.take() {
            sink.push(
                Code::Deprecated,
                format!("{cp}.minimumRingSize"),
                "minimumRingSize is deprecated; read as ringHash.minimumRingSize",
            );
            ch.ring_hash
                .get_or_insert_with(RingHash::default)
                .minimum_ring_size
                .get_or_insert(n);
        }
        checks::non_negative(
            sink,
            &format!("{cp}.ringHash.minimumRingSize"),
            ch.ring_hash.as_ref().and_then(|r| r.minimum_ring_size),
        );
        checks::non_negative(
            sink,
            &format!("{cp}.maglev.tableSize"),
            ch.maglev.as_ref().and_then(|m| m.table_size),
        );
    }
    if lb.locality_lb_setting.is_some() {
        sink.push(
            Code::Unsupported,
            format!("{path}.localityLbSetting"),
            "localityLbSetting is not translated; ignored",
        );
    }
    checks::opt_duration(
        sink,
        &format!("{path}.warmupDurationSecs"),
        &lb.warmup_duration_secs,
        Zero::Allowed,
    );
}

fn connection_pool(sink: &mut Sink, path: &str, cp: &ConnectionPoolSettings) {
    if let Some(t) = &cp.tcp {
        let tp = format!("{path}.tcp");
        checks::non_negative(sink, &format!("{tp}.maxConnections"), t.max_connections);
        // Envoy's Cluster.connect_timeout must be > 0.
        checks::opt_duration(
            sink,
            &format!("{tp}.connectTimeout"),
            &t.connect_timeout,
            Zero::Rejected,
        );
        checks::opt_duration(
            sink,
            &format!("{tp}.maxConnectionDuration"),
            &t.max_connection_duration,
            Zero::Rejected,
        );
        checks::opt_duration(sink, &format!("{tp}.idleTimeout"), &t.idle_timeout, Zero::Allowed);
        if let Some(k) = &t.tcp_keepalive {
            checks::non_negative(sink, &format!("{tp}.tcpKeepalive.probes"), k.probes);
            checks::opt_duration(sink, &format!("{tp}.tcpKeepalive.time"), &k.time, Zero::Allowed);
            checks::opt_duration(
                sink,
                &format!("{tp}.tcpKeepalive.interval"),
                &k.interval,
                Zero::Allowed,
            );
        }
    }
    if let Some(h) = &cp.http {
        let hp = format!("{path}.http");
        for (field, v) in [
            ("http1MaxPendingRequests", h.http1_max_pending_requests),
            ("http2MaxRequests", h.http2_max_requests),
            ("maxRequestsPerConnection", h.max_requests_per_connection),
            ("maxRetries", h.max_retries),
            ("maxConcurrentStreams", h.max_concurrent_streams),
        ] {
            checks::non_negative(sink, &format!("{hp}.{field}"), v);
        }
        checks::opt_duration(sink, &format!("{hp}.idleTimeout"), &h.idle_timeout, Zero::Allowed);
        if let Some(H2UpgradePolicy::Other(v)) = &h.h2_upgrade_policy {
            sink.push(
                Code::UnknownValue,
                format!("{hp}.h2UpgradePolicy"),
                format!(
                    "unknown value {v:?} (known: {})",
                    H2UpgradePolicy::KNOWN.join(", ")
                ),
            );
        }
    }
}

fn outlier_detection(sink: &mut Sink, path: &str, od: &mut OutlierDetection) {
    if let Some(n) = od.consecutive_errors.take() {
        if od.consecutive_gateway_errors.is_some() {
            sink.push(
                Code::Deprecated,
                format!("{path}.consecutiveErrors"),
                "consecutiveErrors is deprecated; ignored because consecutiveGatewayErrors is set",
            );
        } else {
            sink.push(
                Code::Deprecated,
                format!("{path}.consecutiveErrors"),
                format!(
                    "consecutiveErrors is deprecated; read as consecutiveGatewayErrors: {n} \
                     (502, 503, 504 and connection failures), as Istio <= 1.6 did (Istio >= 1.7 ignores it)"
                ),
            );
            od.consecutive_gateway_errors = Some(n);
        }
    }
    for (field, v) in [
        ("consecutiveGatewayErrors", od.consecutive_gateway_errors),
        ("consecutive5xxErrors", od.consecutive_5xx_errors),
        (
            "consecutiveLocalOriginFailures",
            od.consecutive_local_origin_failures,
        ),
    ] {
        checks::non_negative(sink, &format!("{path}.{field}"), v);
    }
    // Envoy's interval and base_ejection_time must be > 0.
    checks::opt_duration(sink, &format!("{path}.interval"), &od.interval, Zero::Rejected);
    checks::opt_duration(
        sink,
        &format!("{path}.baseEjectionTime"),
        &od.base_ejection_time,
        Zero::Rejected,
    );
    if let Some(p) = od.max_ejection_percent {
        checks::int_percent(sink, &format!("{path}.maxEjectionPercent"), p);
    }
    if let Some(p) = od.min_health_percent {
        checks::int_percent(sink, &format!("{path}.minHealthPercent"), p);
    }
}
