//! The one internal routing model every front end lowers into, and the translator reads:
//! host (a Service port) -> ordered HTTP rules -> weighted destinations, plus a per-destination
//! policy (subsets and their cluster policy).
//!
//! Front ends only parse and validate: Istio resources are lowered by [`crate::istio`]; what they
//! cannot express is reported there, so everything in this model is valid for Envoy (the
//! translator still checks references: a rule naming a subset or Service that is not there is
//! not emitted, see `translate::mesh_routes`).
//!
//! The `traffic.*` labels are not lowered into this model yet: their routes and clusters are
//! still built straight from the parsed labels (`translate::routes`, `translate::clusters`);
//! where a model rule or policy exists for a Service port it replaces the label-derived route or
//! is merged into the label-derived cluster policy, field by field.

use std::collections::BTreeMap;
use std::time::Duration;

use traffic_labels::Percent;

use crate::snapshot::ObjectRef;

mod external;
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
}

/// A weighted split of TCP connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpRoute {
    pub origin: ObjectRef,
    pub destinations: Vec<(Destination, u32)>,
}

impl RoutingModel {
    pub fn is_empty(&self) -> bool {
        self.http.is_empty()
            && self.policies.is_empty()
            && self.gateway_servers.is_empty()
            && self.tcp.is_empty()
            && self.external.is_empty()
    }
}

/// One ordered HTTP rule.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpRule {
    /// The object the rule came from (a VirtualService).
    pub origin: ObjectRef,
    /// Unique within its route configuration: `<namespace>/<name>/<index>[/<rule name>]`.
    pub name: String,
    /// Any of these (OR); none = every request.
    pub matches: Vec<RequestMatch>,
    pub action: HttpAction,
    /// `None`: the label policy's timeout (or none at all).
    pub timeout: Option<Duration>,
    /// `None`: the label policy's retries (or none).
    pub retries: Option<Retries>,
    /// `None`: the label policy's faults (or none).
    pub fault: Option<Fault>,
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
