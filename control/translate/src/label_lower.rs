//! The `traffic.*` labels front end: a Service's parsed labels lowered into the routing model
//! ([`crate::routing`]), the same types the Istio front end ([`crate::istio_lower`]) produces.
//!
//! Each Service port gets a default rule (every request no other rule matches goes to the port
//! itself with the label policy) and the Service gets a cluster policy. A calling pod's own
//! labels (Pod-level settings of labels.md) are layered over its Service's before lowering
//! ([`default_route`] with `TrafficPolicy::overlay`), which gives that caller its own default rule.
//!
//! | label | model |
//! |---|---|
//! | `traffic.request.timeout` | `HttpRule.timeout` (0 = none; the route's timeout is always set) |
//! | `traffic.retries.{5xx,connect-failure,gateway-error}` | `HttpRule.retries`: `retry_on` = the conditions > 0, `attempts` = the largest, `retry_other_hosts: false` |
//! | `traffic.fault.delay.*`, `traffic.fault.abort.*` | `HttpRule.fault`: a delay needs a time and a percentage > 0, an abort a status and a percentage > 0 |
//! | `traffic.tracing.enabled` / `.sampling` | `HttpRule.tracing`: the sampling (100 % unless given) when enabled, else 0 |
//! | `traffic.hash.cookie.name` / `.ttl`, `traffic.hash.header.name` | `HttpRule.hash` (cookie first: path `/`, the TTL when > 0) and `LoadBalancer::RingHash` unless `maglev` |
//! | `traffic.rate.limit` | `DefaultRoute.rate_limit_kbps` (> 0) |
//! | `traffic.lb.policy` | `ClusterPolicy.load_balancer` |
//! | `traffic.connection.timeout` | `ConnectionPool.connect_timeout` |
//! | `traffic.connection.max`, `request.max-pending`, `request.max`, `retries.max` | `ConnectionPool` thresholds (0 = unset) |

use traffic_labels::{ClusterPolicy as Labels, LbPolicy, Percent, Settings, TrafficPolicy};

use crate::routing::{
    ClusterPolicy, ConnectionPool, DefaultRoute, Destination, Fault, HashKey, HttpAction, HttpRule,
    LoadBalancer, Retries, Rewrite, RoutingModel, ServiceKey, WeightedDestination,
};
use crate::snapshot::ObjectRef;

/// Lower the labels `settings` of Service (or external host) `service` with TCP ports `ports`
/// into `routing`: a default rule per port and, when the labels say anything about the
/// cluster, the Service's cluster policy.
pub fn lower_service(
    routing: &mut RoutingModel,
    service: &ServiceKey,
    origin: &ObjectRef,
    ports: &[u16],
    settings: &Settings,
) {
    for &port in ports {
        let d = default_route(service, port, origin, &settings.traffic, &settings.cluster);
        routing.defaults.insert((service.clone(), port), d);
    }
    let policy = cluster_policy(&settings.cluster);
    if policy != ClusterPolicy::default() {
        routing.label_policies.insert(service.clone(), policy);
    }
}

/// The default rule of Service `service`'s port `port` (named like the port's cluster,
/// `<port>|<namespace>|<service>`), from the request settings `traffic` and the Service's hash
/// settings in `cluster`.
pub fn default_route(
    service: &ServiceKey,
    port: u16,
    origin: &ObjectRef,
    traffic: &TrafficPolicy,
    cluster: &Labels,
) -> DefaultRoute {
    DefaultRoute {
        rule: HttpRule {
            origin: origin.clone(),
            name: format!("{port}|{}|{}", service.namespace, service.name),
            matches: Vec::new(),
            action: HttpAction::Route(vec![WeightedDestination {
                destination: Destination {
                    service: service.clone(),
                    port,
                    subset: None,
                },
                weight: 1,
                headers: Default::default(),
            }]),
            timeout: traffic.request_timeout,
            retries: retries(traffic),
            fault: fault(traffic),
            tracing: Some(tracing(traffic)),
            hash: hash_keys(cluster),
            mirrors: Vec::new(),
            rewrite: Rewrite::default(),
            headers: Default::default(),
        },
        rate_limit_kbps: traffic.rate_limit_kbps.filter(|k| *k > 0),
    }
}

/// The Service's cluster policy.
pub fn cluster_policy(labels: &Labels) -> ClusterPolicy {
    let hashing = labels.hash_cookie_name.is_some() || labels.hash_header_name.is_some();
    let load_balancer = match (labels.lb_policy, hashing) {
        (Some(LbPolicy::Maglev), _) => Some(LoadBalancer::Maglev),
        (Some(LbPolicy::RingHash), _) | (_, true) => Some(LoadBalancer::RingHash),
        (None, false) => None,
        (Some(LbPolicy::RoundRobin), false) => Some(LoadBalancer::RoundRobin),
        (Some(LbPolicy::LeastRequest), false) => Some(LoadBalancer::LeastRequest),
        (Some(LbPolicy::Random), false) => Some(LoadBalancer::Random),
    };
    let nonzero = |v: Option<u32>| v.filter(|n| *n > 0);
    let pool = ConnectionPool {
        max_connections: nonzero(labels.connection_max),
        connect_timeout: labels.connection_timeout,
        max_pending_requests: nonzero(labels.request_max_pending),
        max_requests: nonzero(labels.request_max),
        max_requests_per_connection: None,
        max_retries: nonzero(labels.retries_max),
    };
    ClusterPolicy {
        load_balancer,
        connection_pool: (pool != ConnectionPool::default()).then_some(pool),
        outlier_detection: None,
    }
}

/// `None` when no retry label is given; 0 attempts (no retries) when all given ones are 0.
fn retries(traffic: &TrafficPolicy) -> Option<Retries> {
    let r = &traffic.retries;
    let conditions = [
        ("5xx", r.on_5xx),
        ("connect-failure", r.on_connect_failure),
        ("gateway-error", r.on_gateway_error),
    ];
    if conditions.iter().all(|(_, n)| n.is_none()) {
        return None;
    }
    let active: Vec<(&str, u32)> = conditions
        .iter()
        .filter_map(|(name, n)| n.filter(|n| *n > 0).map(|n| (*name, n)))
        .collect();
    Some(Retries {
        // Envoy has one retry budget per route: the largest count, on any of the conditions.
        attempts: active.iter().map(|(_, n)| *n).max().unwrap_or(0),
        per_try_timeout: None,
        retry_on: active.iter().map(|(name, _)| name.to_string()).collect(),
        status_codes: Vec::new(),
        retry_other_hosts: false,
    })
}

/// `None` when neither a delay time nor an abort status is given.
fn fault(traffic: &TrafficPolicy) -> Option<Fault> {
    let f = &traffic.fault;
    if f.delay_time.is_none() && f.abort_status.is_none() {
        return None;
    }
    let delay = match (f.delay_time, f.delay_percentage) {
        (Some(t), Some(p)) if !t.is_zero() && p.ppm() > 0 => Some((t, p)),
        _ => None,
    };
    let abort = match (f.abort_status, f.abort_percentage) {
        (Some(status), Some(p)) if status > 0 && p.ppm() > 0 => Some((u32::from(status), p)),
        _ => None,
    };
    Some(Fault { delay, abort })
}

fn tracing(traffic: &TrafficPolicy) -> Percent {
    if traffic.tracing_enabled == Some(true) {
        traffic
            .tracing_sampling
            .unwrap_or(traffic_labels::defaults::TRACING_SAMPLING)
    } else {
        Percent::ZERO
    }
}

fn hash_keys(labels: &Labels) -> Vec<HashKey> {
    let cookie = labels.hash_cookie_name.as_ref().map(|name| HashKey::Cookie {
        name: name.clone(),
        // With a TTL Envoy generates the cookie (set-cookie ...; Max-Age=<ttl>).
        ttl: labels.hash_cookie_ttl.filter(|d| !d.is_zero()),
        path: Some("/".to_string()),
    });
    let header = labels.hash_header_name.clone().map(HashKey::Header);
    cookie.into_iter().chain(header).collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn parse(labels: &[(&str, &str)]) -> traffic_labels::Settings {
        let map = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let parsed = traffic_labels::parse(traffic_labels::ObjectKind::Service, &map);
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        parsed.settings
    }

    fn route(labels: &[(&str, &str)]) -> DefaultRoute {
        let s = parse(labels);
        let key = ServiceKey::new("ns", "web");
        let origin = ObjectRef::new("Service", "ns", "web");
        default_route(&key, 9080, &origin, &s.traffic, &s.cluster)
    }

    #[test]
    fn no_labels_route_to_the_port_with_nothing_said() {
        let d = route(&[]);
        assert_eq!(d.rule.name, "9080|ns|web");
        assert!(d.rule.matches.is_empty() && d.rule.is_catch_all());
        let HttpAction::Route(ds) = &d.rule.action else {
            panic!("a route")
        };
        assert_eq!(ds.len(), 1);
        assert_eq!(ds[0].destination.port, 9080);
        assert_eq!(ds[0].destination.subset, None);
        assert_eq!(d.rule.timeout, None);
        assert_eq!(d.rule.retries, None);
        assert_eq!(d.rule.fault, None);
        assert_eq!(d.rule.tracing, Some(Percent::ZERO));
        assert!(d.rule.hash.is_empty());
        assert_eq!(d.rate_limit_kbps, None);
        assert_eq!(cluster_policy(&parse(&[]).cluster), ClusterPolicy::default());
    }

    #[test]
    fn retries_take_the_largest_count_on_the_conditions_above_zero() {
        let d = route(&[
            ("traffic.retries.5xx", "2"),
            ("traffic.retries.connect-failure", "0"),
            ("traffic.retries.gateway-error", "4"),
        ]);
        let r = d.rule.retries.expect("retries");
        assert_eq!(r.attempts, 4);
        assert_eq!(r.retry_on, ["5xx", "gateway-error"]);
        assert!(!r.retry_other_hosts);
        // All zero: said, but no retries.
        let r = route(&[("traffic.retries.5xx", "0")]).rule.retries.expect("said");
        assert_eq!((r.attempts, r.retry_on.len()), (0, 0));
    }

    #[test]
    fn faults_need_both_halves() {
        let d = route(&[
            ("traffic.fault.delay.time", "3000"),
            ("traffic.fault.delay.percentage", "50"),
            ("traffic.fault.abort.status", "505"),
        ]);
        let f = d.rule.fault.expect("fault");
        assert_eq!(
            f.delay,
            Some((Duration::from_secs(3), Percent::from_ppm(500_000).expect("50%")))
        );
        assert_eq!(f.abort, None, "no abort percentage");
        let f = route(&[
            ("traffic.fault.delay.time", "0"),
            ("traffic.fault.delay.percentage", "9"),
        ])
        .rule
        .fault
        .expect("said");
        assert_eq!(f, Fault::default());
    }

    #[test]
    fn tracing_hash_rate_limit_and_timeout() {
        let d = route(&[
            ("traffic.tracing.enabled", "true"),
            ("traffic.hash.cookie.name", "c"),
            ("traffic.hash.cookie.ttl", "0"),
            ("traffic.hash.header.name", "x-u"),
            ("traffic.rate.limit", "64"),
            ("traffic.request.timeout", "250"),
        ]);
        assert_eq!(d.rule.tracing, Some(traffic_labels::defaults::TRACING_SAMPLING));
        assert_eq!(
            d.rule.hash,
            [
                HashKey::Cookie {
                    name: "c".into(),
                    ttl: None,
                    path: Some("/".into())
                },
                HashKey::Header("x-u".into())
            ]
        );
        assert_eq!(d.rate_limit_kbps, Some(64));
        assert_eq!(d.rule.timeout, Some(Duration::from_millis(250)));
        let sampled = route(&[("traffic.tracing.sampling", "50")]);
        assert_eq!(sampled.rule.tracing, Some(Percent::ZERO), "not enabled");
        assert_eq!(route(&[("traffic.rate.limit", "0")]).rate_limit_kbps, None);
    }

    #[test]
    fn cluster_policy_lb_and_thresholds() {
        let lb = |labels: &[(&str, &str)]| cluster_policy(&parse(labels).cluster).load_balancer;
        assert_eq!(lb(&[("traffic.lb.policy", "random")]), Some(LoadBalancer::Random));
        assert_eq!(
            lb(&[("traffic.lb.policy", "random"), ("traffic.hash.header.name", "h")]),
            Some(LoadBalancer::RingHash),
            "hashing needs a hashing balancer"
        );
        assert_eq!(
            lb(&[("traffic.lb.policy", "maglev"), ("traffic.hash.header.name", "h")]),
            Some(LoadBalancer::Maglev)
        );
        let p = cluster_policy(
            &parse(&[
                ("traffic.connection.max", "0"),
                ("traffic.request.max", "7"),
                ("traffic.connection.timeout", "2s"),
            ])
            .cluster,
        );
        let pool = p.connection_pool.expect("pool");
        assert_eq!(pool.max_connections, None, "0 = unset");
        assert_eq!(pool.max_requests, Some(7));
        assert_eq!(pool.connect_timeout, Some(Duration::from_secs(2)));
    }
}
