//! Consistency of one node's resources: every name a resource refers to (RDS route configuration,
//! cluster, EDS assignment, SDS secret) is sent too. Like go-control-plane's `Consistent()`, but
//! it decodes the encoded resources, so it checks what Envoy will actually receive.

use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster};
use envoy_types::pb::envoy::config::core::v3::transport_socket;
use envoy_types::pb::envoy::config::listener::v3::{filter, FilterChain, Listener};
use envoy_types::pb::envoy::config::route::v3::{route, route_action, RouteConfiguration};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager, HttpConnectionManager,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{tcp_proxy, TcpProxy};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::DownstreamTlsContext;
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};

use crate::snapshot::{NodeResources, CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET};

/// One broken reference (or an undecodable resource).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Inconsistency {
    #[error("node {node}: {from} refers to {missing_type} {missing:?}, which the node does not get")]
    Missing {
        node: String,
        from: String,
        missing_type: &'static str,
        missing: String,
    },
    #[error("node {node}: {from} cannot be decoded as {type_url}: {error}")]
    Undecodable {
        node: String,
        from: String,
        type_url: String,
        error: String,
    },
}

impl Inconsistency {
    pub(crate) fn set_node(&mut self, name: &str) {
        match self {
            Inconsistency::Missing { node, .. } | Inconsistency::Undecodable { node, .. } => {
                *node = name.to_string()
            }
        }
    }
}

struct Checker<'a> {
    res: &'a NodeResources,
    errors: Vec<Inconsistency>,
}

impl Checker<'_> {
    fn has(&self, type_url: &str, name: &str) -> bool {
        self.res.get(type_url).is_some_and(|m| m.contains_key(name))
    }

    fn need(&mut self, from: &str, type_url: &'static str, name: &str) {
        if !self.has(type_url, name) {
            let missing_type = type_url.rsplit('.').next().unwrap_or(type_url);
            self.errors.push(Inconsistency::Missing {
                node: String::new(),
                from: from.to_string(),
                missing_type,
                missing: name.to_string(),
            });
        }
    }

    fn decode<M: Message + Name + Default>(&mut self, from: &str, any: &Any) -> Option<M> {
        if any.type_url != M::type_url() {
            return None;
        }
        match M::decode(any.value.as_slice()) {
            Ok(m) => Some(m),
            Err(e) => {
                self.errors.push(Inconsistency::Undecodable {
                    node: String::new(),
                    from: from.to_string(),
                    type_url: any.type_url.clone(),
                    error: e.to_string(),
                });
                None
            }
        }
    }

    fn route_config(&mut self, from: &str, rc: &RouteConfiguration) {
        for vh in &rc.virtual_hosts {
            for r in &vh.routes {
                if let Some(route::Action::Route(a)) = &r.action {
                    if let Some(route_action::ClusterSpecifier::Cluster(c)) = &a.cluster_specifier {
                        self.need(from, CLUSTER, c);
                    }
                }
            }
        }
    }

    fn chain(&mut self, from: &str, chain: &FilterChain) {
        for f in &chain.filters {
            let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else {
                continue;
            };
            if let Some(hcm) = self.decode::<HttpConnectionManager>(from, any) {
                match &hcm.route_specifier {
                    Some(http_connection_manager::RouteSpecifier::Rds(rds)) => {
                        self.need(from, ROUTE, &rds.route_config_name)
                    }
                    Some(http_connection_manager::RouteSpecifier::RouteConfig(rc)) => {
                        self.route_config(from, rc)
                    }
                    _ => {}
                }
                if let Some(t) = hcm.tracing.as_ref().and_then(|t| t.provider.as_ref()) {
                    if t.name == crate::envoy::names::ZIPKIN {
                        self.need(from, CLUSTER, crate::translate::ZIPKIN_CLUSTER);
                    }
                }
            }
            if let Some(tcp) = self.decode::<TcpProxy>(from, any) {
                if let Some(tcp_proxy::ClusterSpecifier::Cluster(c)) = &tcp.cluster_specifier {
                    self.need(from, CLUSTER, c);
                }
            }
        }
        if let Some(ts) = &chain.transport_socket {
            if let Some(transport_socket::ConfigType::TypedConfig(any)) = &ts.config_type {
                if let Some(tls) = self.decode::<DownstreamTlsContext>(from, any) {
                    for sds in tls
                        .common_tls_context
                        .iter()
                        .flat_map(|c| c.tls_certificate_sds_secret_configs.iter())
                    {
                        self.need(from, SECRET, &sds.name);
                    }
                }
            }
        }
    }
}

/// Check one node's resources.
pub fn check(res: &NodeResources) -> Result<(), Vec<Inconsistency>> {
    let mut c = Checker {
        res,
        errors: Vec::new(),
    };
    let empty = Default::default();
    for (name, r) in res.get(LISTENER).unwrap_or(&empty) {
        let from = format!("Listener {name:?}");
        if let Some(l) = c.decode::<Listener>(&from, &r.body) {
            for chain in l.filter_chains.iter().chain(l.default_filter_chain.iter()) {
                c.chain(&from, chain);
            }
        }
    }
    for (name, r) in res.get(ROUTE).unwrap_or(&empty) {
        let from = format!("RouteConfiguration {name:?}");
        if let Some(rc) = c.decode::<RouteConfiguration>(&from, &r.body) {
            c.route_config(&from, &rc);
        }
    }
    for (name, r) in res.get(CLUSTER).unwrap_or(&empty) {
        let from = format!("Cluster {name:?}");
        if let Some(cl) = c.decode::<Cluster>(&from, &r.body) {
            let eds = matches!(
                cl.cluster_discovery_type,
                Some(cluster::ClusterDiscoveryType::Type(t)) if t == cluster::DiscoveryType::Eds as i32
            );
            if eds {
                let service = cl
                    .eds_cluster_config
                    .as_ref()
                    .map(|e| e.service_name.as_str())
                    .filter(|s| !s.is_empty())
                    .unwrap_or(name);
                c.need(&from, ENDPOINT, service);
            }
        }
    }
    if c.errors.is_empty() {
        Ok(())
    } else {
        Err(c.errors)
    }
}
