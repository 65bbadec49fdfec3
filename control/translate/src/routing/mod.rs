//! The one internal routing model every front end lowers into, and the translator reads:
//! host (a Service port) -> ordered HTTP rules -> weighted destinations, plus a per-destination
//! policy (subsets and their cluster policy).
//!
//! Two front ends feed it; they only parse, validate and lower, and what they cannot express is
//! reported there, so everything in this model is valid for Envoy:
//! - the `traffic.*` labels ([`crate::label_lower`]): every Service port gets a default rule
//!   ([`RoutingModel::defaults`]: the route to the port itself with the label timeout, retries,
//!   fault, tracing, hash keys and rate limit) and every Service whose labels say anything about
//!   its clusters a cluster policy ([`RoutingModel::label_policies`]);
//! - Istio resources ([`crate::istio_lower`]): rules per Service port ([`RoutingModel::http`]),
//!   destination policies with subsets, Gateway servers, `tcp[]` routes, ServiceEntry hosts.
//!
//! The two meet in one place, [`merge`], with the per-setting precedence documented there (and in
//! the README): a port's rules are the Istio rules, each with the label settings it does not set,
//! then the label default rule unless a rule matches every request; a cluster's policy is the
//! DestinationRule's over the labels'. The translator renders only what [`merge`] gives (it still
//! checks references: a rule naming a subset or Service that is not there is not emitted, see
//! `translate::mesh_rules`).
//!
//! Pod-level labels (a calling pod's own `traffic.request.timeout`, retries, faults, rate limit,
//! tracing) are a per-caller overlay: the translator lowers that pod's labels layered over the
//! Service's (labels.md: the pod's win field by field, e.g. its `traffic.retries.5xx` beside the
//! Service's `traffic.retries.connect-failure`) into the caller's own default rule, and merges the
//! same Istio rules with it, for that pod's own copy of the route configuration. The overlay is
//! on the labels rather than on the lowered rule because labels overlay per label (retry
//! conditions, tracing enabled and sampling separately), finer than the rule's fields.

use std::collections::BTreeMap;
use std::time::Duration;

use traffic_labels::Percent;

use crate::snapshot::ObjectRef;

mod external;
pub mod merge;
mod policy;

pub use external::{
    ExternalEndpoint, ExternalHost, ExternalPort, ExternalProtocol, GatewayServer, Location, Resolution,
    ServerProtocol,
};
pub use policy::{
    ClusterPolicy, ConnectionPool, DestinationPolicy, HashKey, LoadBalancer, OutlierDetection, Subset,
};

/// A Kubernetes Service by namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    pub namespace: String,
    pub name: String,
}

impl ServiceKey {
    pub fn new(namespace: &str, name: &str) -> Self {
        ServiceKey {
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }
}

/// Everything the front ends said about routing in the mesh.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RoutingModel {
    /// (Service, port) -> its HTTP rules in precedence order (first match wins).
    pub http: BTreeMap<(ServiceKey, u16), Vec<HttpRule>>,
    /// Service -> subsets and cluster policy.
    pub policies: BTreeMap<ServiceKey, DestinationPolicy>,
    /// The servers of Istio Gateways (in Gateway precedence order, then `servers[]` order)
    /// with the VirtualService rules bound to them.
    pub gateway_servers: Vec<GatewayServer>,
    /// (Service, port) -> where its opaque TCP connections go (Istio `tcp[]`; the first rule
    /// for the port wins), weights > 0.
    pub tcp: BTreeMap<(ServiceKey, u16), TcpRoute>,
    /// Hosts the mesh reaches that are no Kubernetes Service (Istio ServiceEntry), one per host
    /// (the first entry for a host wins), in creation order. Their [`ServiceKey`] is
    /// (the entry's namespace, the host), so rules and policies address them like Services.
    pub external: Vec<ExternalHost>,
    /// (Service or ServiceEntry host, port) -> its default rule from the labels (see
    /// [`crate::label_lower`]; a host without labels gets the plain route to the port), for every
    /// TCP port: which of them are HTTP can depend on the caller (a pod's `traffic.port.<N>`).
    pub defaults: BTreeMap<(ServiceKey, u16), DefaultRoute>,
    /// Service -> the cluster policy of its labels (absent: none).
    pub label_policies: BTreeMap<ServiceKey, ClusterPolicy>,
}

/// The route a Service port's requests take when no other rule matches, and what applies to the
/// port's whole route configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct DefaultRoute {
    /// Matches every request; routes to the port itself. Its origin is the Service (or the
    /// ServiceEntry of an external host).
    pub rule: HttpRule,
    /// `traffic.rate.limit` (KiB/s, > 0): one token bucket per calling pod and port, so it
    /// covers every rule of the port (Envoy's bandwidth limit on the virtual host).
    pub rate_limit_kbps: Option<u64>,
}

/// A weighted split of TCP connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpRoute {
    pub origin: ObjectRef,
    pub destinations: Vec<(Destination, u32)>,
}

impl RoutingModel {
    /// Nothing from the Istio front end (label defaults aside).
    pub fn is_empty(&self) -> bool {
        self.http.is_empty()
            && self.policies.is_empty()
            && self.gateway_servers.is_empty()
            && self.tcp.is_empty()
            && self.external.is_empty()
    }

    /// The policy of the cluster of `service`'s port `port` (or of its `subset`): the
    /// DestinationRule's over the labels', see [`merge::cluster_policy`].
    pub fn cluster_policy(&self, service: &ServiceKey, port: u16, subset: Option<&str>) -> ClusterPolicy {
        let none = ClusterPolicy::default();
        let labels = self.label_policies.get(service).unwrap_or(&none);
        let dr = self.policies.get(service);
        let istio = match (dr, subset) {
            (Some(dp), Some(name)) => dp.subset(name).map(|s| s.policy.clone()),
            (Some(dp), None) => Some(dp.for_port(port)),
            (None, _) => None,
        };
        merge::cluster_policy(istio.as_ref(), labels)
    }
}

/// One ordered HTTP rule.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpRule {
    /// The object the rule came from (a VirtualService; the Service for a label default rule).
    pub origin: ObjectRef,
    /// Unique within its route configuration: `<namespace>/<name>/<index>[/<rule name>]`.
    pub name: String,
    /// Any of these (OR); none = every request.
    pub matches: Vec<RequestMatch>,
    pub action: HttpAction,
    /// `None`: not said (the label default's, see [`merge`]; none at all: 0 = no timeout).
    pub timeout: Option<Duration>,
    /// `None`: not said (the label default's, or none).
    pub retries: Option<Retries>,
    /// `None`: not said (the label default's, or none); `Some` without delay or abort: no fault.
    pub fault: Option<Fault>,
    /// Share of requests traced (when a collector is configured; 0: none). `None`: not said.
    pub tracing: Option<Percent>,
    /// Consistent-hash keys of the route, in order (empty: not said). A destination policy's
    /// `ConsistentHash` wins, see [`merge`].
    pub hash: Vec<HashKey>,
    pub mirrors: Vec<Mirror>,
    pub rewrite: Rewrite,
    pub headers: HeaderOps,
}

impl HttpRule {
    /// The rule as caller `caller` sees it: only the matches whose source conditions it meets,
    /// with those conditions dropped; `None` when no match is left.
    pub fn for_caller(&self, caller: Option<(&str, &BTreeMap<String, String>)>) -> Option<HttpRule> {
        if !self.matches.iter().any(RequestMatch::has_source) {
            return Some(self.clone());
        }
        let matches: Vec<RequestMatch> = self
            .matches
            .iter()
            .filter(|m| m.source_matches(caller))
            .map(|m| RequestMatch {
                source_labels: BTreeMap::new(),
                source_namespace: None,
                ..m.clone()
            })
            .collect();
        if matches.is_empty() {
            return None;
        }
        Some(HttpRule {
            matches,
            ..self.clone()
        })
    }

    /// A rule that matches every request.
    pub fn is_catch_all(&self) -> bool {
        self.matches.is_empty() || self.matches.iter().any(RequestMatch::is_empty)
    }
}

/// All given conditions must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestMatch {
    pub uri: Option<StringMatch>,
    pub ignore_uri_case: bool,
    pub headers: Vec<HeaderMatch>,
    pub query_params: Vec<QueryParamMatch>,
    pub method: Option<StringMatch>,
    pub authority: Option<StringMatch>,
    /// Only callers (pods) with all these labels (Istio `sourceLabels`): not an Envoy field, the
    /// control plane gives such callers their own route configuration.
    pub source_labels: BTreeMap<String, String>,
    /// Only callers in this namespace (Istio `sourceNamespace`).
    pub source_namespace: Option<String>,
}

impl RequestMatch {
    pub fn is_empty(&self) -> bool {
        self == &RequestMatch::default()
    }

    /// Whether it depends on who calls.
    pub fn has_source(&self) -> bool {
        !self.source_labels.is_empty() || self.source_namespace.is_some()
    }

    /// Whether a caller in `namespace` with `labels` (none: the shared view, which no source
    /// condition matches) meets the source conditions.
    pub fn source_matches(&self, caller: Option<(&str, &BTreeMap<String, String>)>) -> bool {
        if !self.has_source() {
            return true;
        }
        let Some((namespace, labels)) = caller else {
            return false;
        };
        self.source_namespace.as_deref().is_none_or(|ns| ns == namespace)
            && self.source_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

/// Exact, prefix, or RE2 regular expression (matching the whole value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Regex(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderMatch {
    /// Lower case.
    pub name: String,
    /// `None`: the header is present.
    pub value: Option<StringMatch>,
    /// The request must *not* match (Istio `withoutHeaders`).
    pub invert: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryParamMatch {
    pub name: String,
    /// `None`: the parameter is present.
    pub value: Option<StringMatch>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum HttpAction {
    /// Forward to these destinations, split by weight (at least one, weights > 0).
    Route(Vec<WeightedDestination>),
    Redirect(Redirect),
    DirectResponse {
        status: u32,
        body: Option<String>,
    },
}

/// A Service port, optionally one subset of it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Destination {
    pub service: ServiceKey,
    /// 0 only in a rule not placed on a port yet: "the port the request came to".
    pub port: u16,
    pub subset: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightedDestination {
    pub destination: Destination,
    /// Relative weight, > 0.
    pub weight: u32,
    pub headers: HeaderOps,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Retries {
    /// 0 disables retries.
    pub attempts: u32,
    pub per_try_timeout: Option<Duration>,
    /// Envoy `retry_on` conditions (`5xx`, `reset`, `connect-failure`, `retriable-4xx`, ...).
    pub retry_on: Vec<String>,
    /// Numeric codes from `retryOn` (these add `retriable-status-codes`).
    pub status_codes: Vec<u32>,
    /// Retry on another host than the ones tried (Istio's retries); the labels' retries may
    /// reach the same host again.
    pub retry_other_hosts: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fault {
    pub delay: Option<(Duration, Percent)>,
    /// HTTP status, percentage.
    pub abort: Option<(u32, Percent)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    pub destination: Destination,
    /// `None`: every request.
    pub percentage: Option<Percent>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rewrite {
    /// Replaces the matched path prefix (or the whole path for an exact match).
    pub uri: Option<String>,
    pub authority: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Redirect {
    pub uri: Option<String>,
    pub authority: Option<String>,
    pub port: Option<u16>,
    pub scheme: Option<String>,
    /// 301 (default), 302, 303, 307 or 308.
    pub code: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderOps {
    pub request: HeaderOperations,
    pub response: HeaderOperations,
}

impl HeaderOps {
    pub fn is_empty(&self) -> bool {
        self == &HeaderOps::default()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderOperations {
    pub set: Vec<(String, String)>,
    pub add: Vec<(String, String)>,
    pub remove: Vec<String>,
}
