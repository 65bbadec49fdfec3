//! RDS: the routing model's [`HttpRule`]s as Envoy routes — a port's label default rule and the
//! Istio rules alike, each already merged with the label policy where it says nothing
//! ([`crate::routing::merge`]). A rule with several `matches` becomes one route per match, same
//! action.
//!
//! | model | Envoy |
//! |---|---|
//! | no match | `prefix: "/"` |
//! | `uri` exact / prefix / regex (+ `ignore_uri_case`) | `RouteMatch.path` / `prefix` / `safe_regex` (+ `case_sensitive: false`) |
//! | `headers` exact / prefix / regex / present, `invert` (withoutHeaders) | `RouteMatch.headers[]` `string_match` / `present_match`, `invert_match` |
//! | `query_params` | `RouteMatch.query_parameters[]` |
//! | `method`, `authority` | `:method`, `:authority` header matchers |
//! | one destination | `RouteAction.cluster` (`<port>\|<ns>\|<svc>[\|<subset>]`) |
//! | several destinations | `RouteAction.weighted_clusters` (per-destination headers on each `ClusterWeight`) |
//! | `timeout` | `RouteAction.timeout` (always set for a route action: 0 = none, Envoy's default would be 15 s) |
//! | `retries` | `RouteAction.retry_policy` (`num_retries`, `per_try_timeout`, `retry_on`, numeric codes -> `retriable_status_codes`; `retry_other_hosts`: the `previous_hosts` predicate, and Istio's default conditions when none are given) |
//! | `tracing` | `Route.tracing.random_sampling` (only with a Zipkin collector) |
//! | `hash` | `RouteAction.hash_policy[]` (cookie: `name`, `ttl`, `path`; header; source IP; query parameter) |
//! | `fault` | `typed_per_filter_config["envoy.filters.http.fault"]` (sidecars only) |
//! | `mirrors` | `RouteAction.request_mirror_policies[]` with `runtime_fraction` |
//! | `rewrite` uri / authority | `prefix_rewrite` / `host_rewrite_literal` |
//! | `redirect`, `direct_response` | `Route.redirect`, `Route.direct_response` |
//! | `headers` set / add / remove | `request_headers_to_add` (OVERWRITE_IF_EXISTS_OR_ADD / APPEND_IF_EXISTS_OR_ADD), `*_headers_to_remove`, `response_*` |

use envoy_types::pb::envoy::config::core::v3::{
    data_source, header_value_option::HeaderAppendAction, DataSource, HeaderValue, HeaderValueOption,
    RuntimeFractionalPercent,
};
use envoy_types::pb::envoy::config::route::v3::{
    header_matcher, query_parameter_matcher, redirect_action, retry_policy, route, route_action,
    route_action::hash_policy, route_match, weighted_cluster, DirectResponseAction, HeaderMatcher,
    QueryParameterMatcher, RedirectAction, RetryPolicy, Route, RouteAction, RouteMatch,
    Tracing as RouteTracing, WeightedCluster,
};
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::{fault_delay, FaultDelay};
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{fault_abort, FaultAbort, HttpFault};
use envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;
use envoy_types::pb::envoy::r#type::matcher::v3::{string_matcher, RegexMatcher, StringMatcher};
use envoy_types::pb::google::protobuf::BoolValue;

use super::cluster_policy::subset_cluster_name;
use super::routes::Side;
use super::Options;
use crate::envoy::{self, names};
use crate::routing::{
    Destination, Fault, HashKey, HeaderOperations, HttpAction, HttpRule, Mirror, RequestMatch, Retries,
    StringMatch,
};

const PREVIOUS_HOSTS: &str = "envoy.retry_host_predicates.previous_hosts";

/// The cluster a destination names: `<port>|<ns>|<svc>` or, for a subset, `<port>|<ns>|<svc>|<subset>`.
pub fn destination_cluster(d: &Destination) -> String {
    let base = format!("{}|{}|{}", d.port, d.service.namespace, d.service.name);
    match &d.subset {
        Some(subset) => subset_cluster_name(&base, subset),
        None => base,
    }
}

/// The Envoy routes of one rule (already merged with its port's label default, see
/// [`crate::routing::merge`]): one per match, same action.
pub(super) fn rule_routes(rule: &HttpRule, side: Side, opts: &Options) -> Vec<Route> {
    let mut route = Route {
        name: rule.name.clone(),
        ..Default::default()
    };
    match &rule.action {
        HttpAction::Route(destinations) => {
            route.action = Some(route::Action::Route(route_action(rule, destinations)));
            if let [only] = destinations.as_slice() {
                add_headers(&mut route, &only.headers.request, &only.headers.response);
            }
        }
        HttpAction::Redirect(r) => {
            route.action = Some(route::Action::Redirect(RedirectAction {
                host_redirect: r.authority.clone().unwrap_or_default(),
                port_redirect: r.port.map(u32::from).unwrap_or(0),
                response_code: redirect_code(r.code) as i32,
                scheme_rewrite_specifier: r
                    .scheme
                    .clone()
                    .map(redirect_action::SchemeRewriteSpecifier::SchemeRedirect),
                path_rewrite_specifier: r
                    .uri
                    .clone()
                    .map(redirect_action::PathRewriteSpecifier::PathRedirect),
                ..Default::default()
            }));
        }
        HttpAction::DirectResponse { status, body } => {
            route.action = Some(route::Action::DirectResponse(DirectResponseAction {
                status: *status,
                body: body.clone().map(|b| DataSource {
                    specifier: Some(data_source::Specifier::InlineString(b)),
                    ..Default::default()
                }),
                ..Default::default()
            }));
        }
    }
    add_headers(&mut route, &rule.headers.request, &rule.headers.response);
    if opts.zipkin.is_some() {
        if let Some(sampling) = rule.tracing {
            route.tracing = Some(RouteTracing {
                random_sampling: Some(envoy::fractional_percent(sampling)),
                ..Default::default()
            });
        }
    }
    // Fault injection is the sidecars' (labels.md: not applied at the ingress gateway).
    if side == Side::Sidecar {
        if let Some(fault) = rule.fault.as_ref().and_then(http_fault) {
            route
                .typed_per_filter_config
                .insert(names::FAULT.to_string(), envoy::any(&fault));
        }
    }

    let matches: Vec<RequestMatch> = if rule.matches.is_empty() {
        vec![RequestMatch::default()]
    } else {
        rule.matches.clone()
    };
    let n = matches.len();
    matches
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let mut r = route.clone();
            if n > 1 {
                r.name = format!("{}/match{i}", rule.name);
            }
            r.r#match = Some(route_match(m));
            r
        })
        .collect()
}

fn route_action(rule: &HttpRule, destinations: &[crate::routing::WeightedDestination]) -> RouteAction {
    let mut action = RouteAction {
        cluster_specifier: Some(match destinations {
            [only] => route_action::ClusterSpecifier::Cluster(destination_cluster(&only.destination)),
            many => route_action::ClusterSpecifier::WeightedClusters(WeightedCluster {
                clusters: many
                    .iter()
                    .map(|d| {
                        let (req_add, req_remove) = header_options(&d.headers.request);
                        let (resp_add, resp_remove) = header_options(&d.headers.response);
                        weighted_cluster::ClusterWeight {
                            name: destination_cluster(&d.destination),
                            weight: Some(envoy::u32_value(d.weight)),
                            request_headers_to_add: req_add,
                            request_headers_to_remove: req_remove,
                            response_headers_to_add: resp_add,
                            response_headers_to_remove: resp_remove,
                            ..Default::default()
                        }
                    })
                    .collect(),
                ..Default::default()
            }),
        }),
        // Always set: Envoy's default is 15 s, the contract's default is "none" (0).
        timeout: Some(envoy::duration(rule.timeout.unwrap_or_default())),
        retry_policy: rule.retries.as_ref().and_then(retry_policy),
        hash_policy: rule.hash.iter().map(hash_policy).collect(),
        ..Default::default()
    };
    for m in &rule.mirrors {
        action.request_mirror_policies.push(mirror_policy(m));
    }
    if let Some(uri) = &rule.rewrite.uri {
        action.prefix_rewrite = uri.clone();
    }
    if let Some(authority) = &rule.rewrite.authority {
        action.host_rewrite_specifier = Some(route_action::HostRewriteSpecifier::HostRewriteLiteral(
            authority.clone(),
        ));
    }
    action
}

fn hash_policy(key: &HashKey) -> route_action::HashPolicy {
    let specifier = match key {
        HashKey::Header(name) => hash_policy::PolicySpecifier::Header(hash_policy::Header {
            header_name: name.clone(),
            ..Default::default()
        }),
        HashKey::Cookie { name, ttl, path } => hash_policy::PolicySpecifier::Cookie(hash_policy::Cookie {
            name: name.clone(),
            ttl: ttl.map(envoy::duration),
            path: path.clone().unwrap_or_default(),
            ..Default::default()
        }),
        HashKey::SourceIp => {
            hash_policy::PolicySpecifier::ConnectionProperties(hash_policy::ConnectionProperties {
                source_ip: true,
            })
        }
        HashKey::QueryParameter(name) => {
            hash_policy::PolicySpecifier::QueryParameter(hash_policy::QueryParameter { name: name.clone() })
        }
    };
    route_action::HashPolicy {
        policy_specifier: Some(specifier),
        ..Default::default()
    }
}

fn retry_policy(r: &Retries) -> Option<RetryPolicy> {
    if r.attempts == 0 {
        return None;
    }
    let mut on = r.retry_on.clone();
    if !r.retry_other_hosts {
        // The labels' retries: the conditions and the count, nothing else.
        return Some(RetryPolicy {
            retry_on: on.join(","),
            num_retries: Some(envoy::u32_value(r.attempts)),
            per_try_timeout: r.per_try_timeout.map(envoy::duration),
            retriable_status_codes: r.status_codes.clone(),
            ..Default::default()
        });
    }
    if !r.status_codes.is_empty() && !on.iter().any(|c| c == "retriable-status-codes") {
        on.push("retriable-status-codes".to_string());
    }
    if on.is_empty() {
        // Istio's default conditions when `retryOn` is not given.
        on = [
            "connect-failure",
            "refused-stream",
            "unavailable",
            "cancelled",
            "retriable-status-codes",
        ]
        .map(String::from)
        .to_vec();
    }
    let mut codes = r.status_codes.clone();
    if r.retry_on.is_empty() && codes.is_empty() {
        codes.push(503);
    }
    Some(RetryPolicy {
        retry_on: on.join(","),
        num_retries: Some(envoy::u32_value(r.attempts)),
        per_try_timeout: r.per_try_timeout.map(envoy::duration),
        retriable_status_codes: codes,
        retry_host_predicate: vec![retry_policy::RetryHostPredicate {
            name: PREVIOUS_HOSTS.to_string(),
            config_type: Some(retry_policy::retry_host_predicate::ConfigType::TypedConfig(
                envoy::any(&PreviousHostsPredicate {}),
            )),
        }],
        host_selection_retry_max_attempts: 5,
        ..Default::default()
    })
}

pub(super) fn http_fault(f: &Fault) -> Option<HttpFault> {
    let delay = f
        .delay
        .filter(|(t, p)| !t.is_zero() && p.ppm() > 0)
        .map(|(t, p)| FaultDelay {
            percentage: Some(envoy::fractional_percent(p)),
            fault_delay_secifier: Some(fault_delay::FaultDelaySecifier::FixedDelay(envoy::duration(t))),
        });
    let abort = f
        .abort
        .filter(|(_, p)| p.ppm() > 0)
        .map(|(status, p)| FaultAbort {
            percentage: Some(envoy::fractional_percent(p)),
            error_type: Some(fault_abort::ErrorType::HttpStatus(status)),
            ..Default::default()
        });
    (delay.is_some() || abort.is_some()).then(|| HttpFault {
        delay,
        abort,
        ..Default::default()
    })
}

fn mirror_policy(m: &Mirror) -> route_action::RequestMirrorPolicy {
    route_action::RequestMirrorPolicy {
        cluster: destination_cluster(&m.destination),
        runtime_fraction: m.percentage.map(|p| RuntimeFractionalPercent {
            default_value: Some(envoy::fractional_percent(p)),
            ..Default::default()
        }),
        trace_sampled: Some(BoolValue { value: false }),
        ..Default::default()
    }
}

fn redirect_code(code: u32) -> redirect_action::RedirectResponseCode {
    use redirect_action::RedirectResponseCode as C;
    match code {
        302 => C::Found,
        303 => C::SeeOther,
        307 => C::TemporaryRedirect,
        308 => C::PermanentRedirect,
        _ => C::MovedPermanently,
    }
}

fn add_headers(route: &mut Route, request: &HeaderOperations, response: &HeaderOperations) {
    let (add, remove) = header_options(request);
    route.request_headers_to_add.extend(add);
    route.request_headers_to_remove.extend(remove);
    let (add, remove) = header_options(response);
    route.response_headers_to_add.extend(add);
    route.response_headers_to_remove.extend(remove);
}

fn header_options(ops: &HeaderOperations) -> (Vec<HeaderValueOption>, Vec<String>) {
    let option = |(k, v): &(String, String), action: HeaderAppendAction| HeaderValueOption {
        header: Some(HeaderValue {
            key: k.clone(),
            value: v.clone(),
            ..Default::default()
        }),
        append_action: action as i32,
        ..Default::default()
    };
    let add = ops
        .set
        .iter()
        .map(|kv| option(kv, HeaderAppendAction::OverwriteIfExistsOrAdd))
        .chain(
            ops.add
                .iter()
                .map(|kv| option(kv, HeaderAppendAction::AppendIfExistsOrAdd)),
        )
        .collect();
    (add, ops.remove.clone())
}

pub(super) fn route_match(m: &RequestMatch) -> RouteMatch {
    let path = match &m.uri {
        None => route_match::PathSpecifier::Prefix("/".into()),
        Some(StringMatch::Exact(p)) => route_match::PathSpecifier::Path(p.clone()),
        Some(StringMatch::Prefix(p)) => route_match::PathSpecifier::Prefix(p.clone()),
        Some(StringMatch::Regex(r)) => route_match::PathSpecifier::SafeRegex(regex(r)),
    };
    let mut headers: Vec<HeaderMatcher> = m
        .headers
        .iter()
        .map(|h| header_matcher(&h.name, h.value.as_ref(), h.invert))
        .collect();
    if let Some(method) = &m.method {
        headers.push(header_matcher(":method", Some(method), false));
    }
    if let Some(authority) = &m.authority {
        headers.push(header_matcher(":authority", Some(authority), false));
    }
    RouteMatch {
        path_specifier: Some(path),
        case_sensitive: m.ignore_uri_case.then_some(BoolValue { value: false }),
        headers,
        query_parameters: m
            .query_params
            .iter()
            .map(|q| QueryParameterMatcher {
                name: q.name.clone(),
                query_parameter_match_specifier: Some(match &q.value {
                    Some(v) => query_parameter_matcher::QueryParameterMatchSpecifier::StringMatch(
                        string_matcher_of(v),
                    ),
                    None => query_parameter_matcher::QueryParameterMatchSpecifier::PresentMatch(true),
                }),
            })
            .collect(),
        ..Default::default()
    }
}

fn header_matcher(name: &str, value: Option<&StringMatch>, invert: bool) -> HeaderMatcher {
    HeaderMatcher {
        name: name.to_string(),
        invert_match: invert,
        header_match_specifier: Some(match value {
            Some(v) => header_matcher::HeaderMatchSpecifier::StringMatch(string_matcher_of(v)),
            None => header_matcher::HeaderMatchSpecifier::PresentMatch(true),
        }),
        ..Default::default()
    }
}

fn string_matcher_of(m: &StringMatch) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(match m {
            StringMatch::Exact(s) => string_matcher::MatchPattern::Exact(s.clone()),
            StringMatch::Prefix(s) => string_matcher::MatchPattern::Prefix(s.clone()),
            StringMatch::Regex(r) => string_matcher::MatchPattern::SafeRegex(regex(r)),
        }),
        ..Default::default()
    }
}

fn regex(r: &str) -> RegexMatcher {
    RegexMatcher {
        regex: r.to_string(),
        // Unset: RE2, Envoy's default (naming `google_re2` is deprecated).
        engine_type: None,
    }
}
