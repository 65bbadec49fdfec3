//! Where the front ends meet: the per-setting precedence between a Service's `traffic.*` labels
//! (lowered by [`crate::label_lower`]: a default rule per port and a cluster policy) and the
//! Istio objects for the same Service (lowered by [`crate::istio_lower`]). Every setting is
//! decided here and nowhere else; the translator renders what comes out.
//!
//! | setting | winner |
//! |---|---|
//! | timeout, retries, fault | the VirtualService rule when it sets it, else the labels (a calling pod's over its Service's); the overridden label is reported ([`overridden`]) |
//! | tracing sampling, rate limit | the labels (Istio has no per-route equivalent) |
//! | route hash policy | the DestinationRule's `consistentHash` for the rule's single destination (subset, then port, then top level), else the `traffic.hash.*` keys |
//! | the label default route | after the port's rules, unless one of them matches every request |
//! | load balancer | the DestinationRule's (subset, then port, then top level: whole), else `traffic.lb.policy` / hashing |
//! | circuit breaker thresholds | per threshold: the DestinationRule's, else the label's, else 2^32-1 when a DestinationRule exists (Istio's default), else Envoy's |
//! | connect timeout | the DestinationRule's (> 0), else `traffic.connection.timeout`, else 60 s |
//! | max requests per connection, outlier detection | the DestinationRule only |
//!
//! On the ingress gateway, the rules of a VirtualService bound to an Istio Gateway take the label
//! settings of their first destination's port ([`over_default`]) and no default route follows
//! them; Ingress routes are the port's [`default_rule`]. Faults never apply there.

use super::{
    ClusterPolicy, ConnectionPool, Destination, HashKey, HttpAction, HttpRule, LoadBalancer, RoutingModel,
};
use crate::snapshot::ObjectRef;

/// The rules a port's requests meet, in order: each of `rules` (another front end's, already
/// seen by the caller, see [`HttpRule::for_caller`]) with `default`'s settings where it says
/// nothing, then `default` itself unless a rule matches every request.
pub fn port_rules(rules: &[HttpRule], default: &HttpRule, routing: &RoutingModel) -> Vec<HttpRule> {
    let mut out: Vec<HttpRule> = rules.iter().map(|r| over_default(r, default, routing)).collect();
    if !rules.iter().any(HttpRule::is_catch_all) {
        out.push(default_rule(default, routing));
    }
    out
}

/// A port's label default rule with what the destination policy adds (its consistent-hash key).
pub fn default_rule(default: &HttpRule, routing: &RoutingModel) -> HttpRule {
    over_default(default, default, routing)
}

/// `rule` with `default`'s timeout, retries, fault and tracing where it sets none, and the hash
/// keys of its single destination's policy (else its own, else `default`'s).
pub fn over_default(rule: &HttpRule, default: &HttpRule, routing: &RoutingModel) -> HttpRule {
    let single = match &rule.action {
        HttpAction::Route(ds) if ds.len() == 1 => ds.first().map(|d| &d.destination),
        _ => None,
    };
    let hash = match single.and_then(|d| consistent_hash(d, routing)) {
        Some(key) => vec![key.clone()],
        None if !rule.hash.is_empty() => rule.hash.clone(),
        None => default.hash.clone(),
    };
    HttpRule {
        timeout: rule.timeout.or(default.timeout),
        retries: rule.retries.clone().or_else(|| default.retries.clone()),
        fault: rule.fault.clone().or_else(|| default.fault.clone()),
        tracing: rule.tracing.or(default.tracing),
        hash,
        ..rule.clone()
    }
}

/// The `consistentHash` key of the policy of `d` (its subset's, its port's, or the top level's).
pub fn consistent_hash<'r>(d: &Destination, routing: &'r RoutingModel) -> Option<&'r HashKey> {
    let policy = routing.policies.get(&d.service)?;
    let lb = d
        .subset
        .as_deref()
        .and_then(|s| policy.subset(s))
        .and_then(|s| s.policy.load_balancer.as_ref())
        .or_else(|| {
            policy
                .ports
                .get(&d.port)
                .and_then(|p| p.load_balancer.as_ref())
                .or(policy.policy.load_balancer.as_ref())
        });
    match lb {
        Some(LoadBalancer::ConsistentHash(key)) => Some(key),
        _ => None,
    }
}

/// The label settings of `default` that one of `rules` replaces (the setting's label name and
/// the object of the first rule replacing it): the losers, to be reported.
pub fn overridden<'r>(default: &HttpRule, rules: &'r [HttpRule]) -> Vec<(&'static str, &'r ObjectRef)> {
    let settings: [(&str, Said); 3] = [
        ("traffic.request.timeout", |r| r.timeout.is_some()),
        ("traffic.retries.*", |r| r.retries.is_some()),
        ("traffic.fault.*", |r| r.fault.is_some()),
    ];
    settings
        .iter()
        .filter(|(_, said)| said(default))
        .filter_map(|(name, said)| rules.iter().find(|r| said(r)).map(|r| (*name, &r.origin)))
        .collect()
}

/// Whether a rule sets one setting.
type Said = fn(&HttpRule) -> bool;

/// A cluster's policy: the DestinationRule's `istio` (already resolved for the port or subset,
/// see [`super::DestinationPolicy::for_port`]) over the labels' `labels`.
pub fn cluster_policy(istio: Option<&ClusterPolicy>, labels: &ClusterPolicy) -> ClusterPolicy {
    let Some(istio) = istio else {
        return labels.clone();
    };
    let dr = istio.connection_pool.clone().unwrap_or_default();
    let label = labels.connection_pool.clone().unwrap_or_default();
    // Istio sets every threshold it is not given to 2^32-1 (Envoy's own defaults, e.g. 1024
    // connections, are a surprise at scale); a label value still counts.
    let threshold = |dr: Option<u32>, label: Option<u32>| Some(dr.or(label).unwrap_or(u32::MAX));
    ClusterPolicy {
        load_balancer: istio
            .load_balancer
            .clone()
            .or_else(|| labels.load_balancer.clone()),
        connection_pool: Some(ConnectionPool {
            max_connections: threshold(dr.max_connections, label.max_connections),
            connect_timeout: dr
                .connect_timeout
                .filter(|t| !t.is_zero())
                .or(label.connect_timeout),
            max_pending_requests: threshold(dr.max_pending_requests, label.max_pending_requests),
            max_requests: threshold(dr.max_requests, label.max_requests),
            max_requests_per_connection: dr.max_requests_per_connection,
            max_retries: threshold(dr.max_retries, label.max_retries),
        }),
        outlier_detection: istio.outlier_detection.clone(),
    }
}

#[cfg(test)]
mod tests;
