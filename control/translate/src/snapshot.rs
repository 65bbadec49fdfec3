//! The seam between translation (model -> Envoy resources) and the xDS server.
//!
//! Translation produces a [`Snapshot`](crate::translate::Snapshot): every resource once, shared (`Arc`) between all nodes, plus
//! per-node overrides where a pod's own labels change what its Envoy gets. The xDS server only sees
//! [`MeshSnapshot::for_node`] and never builds resources itself.

use std::collections::BTreeMap;
use std::sync::Arc;

use envoy_types::pb::google::protobuf::Any;

pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

/// The Kubernetes object a resource was derived from (for NACK Events and logs).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    /// "Service", "Pod", "Deployment", "Ingress", ...
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

/// One Envoy resource, encoded once.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    pub name: String,
    pub body: Any,
    /// Content hash of `body` (hex), used as the resource version in delta xDS.
    pub version: String,
    /// The labelled object this resource came from, if any.
    pub origin: Option<ObjectRef>,
}

/// name -> resource, for one type URL.
pub type Resources = BTreeMap<String, Arc<Resource>>;

/// What one node receives: type URL -> resources.
///
/// Each type's map is shared (`Arc`): cloning a view, or a snapshot after an endpoint change,
/// copies no map, and a type whose map is the same allocation in two snapshots is known
/// unchanged without comparing it (the xDS server then keeps that type's version and encodings).
/// Writers go through [`NodeResources::insert`] and [`NodeResources::make_mut`] (copy on write).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeResources {
    pub by_type: BTreeMap<&'static str, Arc<Resources>>,
}

impl NodeResources {
    /// The resources of `type_url`, if the node has that type.
    pub fn get(&self, type_url: &str) -> Option<&Resources> {
        self.by_type.get(type_url).map(|r| &**r)
    }

    /// Sets the resources of `type_url`.
    pub fn insert(&mut self, type_url: &'static str, resources: Resources) {
        self.by_type.insert(type_url, Arc::new(resources));
    }

    /// The resources of `type_url` to change (empty if the node had none): a map shared with
    /// another view or snapshot is copied first.
    pub fn make_mut(&mut self, type_url: &'static str) -> &mut Resources {
        Arc::make_mut(self.by_type.entry(type_url).or_default())
    }
}

/// A computed configuration of the whole mesh. Translation implements it; the xDS server consumes
/// `tokio::sync::watch::Receiver<Arc<dyn MeshSnapshot>>` and pushes a new version to each stream when
/// the value changes. `for_node` must be cheap (it clones `Arc`s; nothing is re-encoded).
pub trait MeshSnapshot: Send + Sync + std::fmt::Debug + 'static {
    /// Everything node `node_id` (`<pod>.<namespace>`, or `traffic-ingress`) should have.
    fn for_node(&self, node_id: &str) -> NodeResources;

    /// Nodes with equal keys get identical resources: the xDS server then calls `for_node` once
    /// per key and snapshot and shares the result between their streams (with 1,000 sidecars on
    /// the shared view that is one call instead of 1,000). The default, the node id itself,
    /// shares nothing. (Added by the xDS server for scale; see control/xds.)
    fn view_key(&self, node_id: &str) -> String {
        node_id.to_string()
    }
}
