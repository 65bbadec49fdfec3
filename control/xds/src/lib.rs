//! The xDS server: Envoy's aggregated discovery service (ADS) over tonic, in both the
//! state-of-the-world and the delta (incremental) variants, for listeners, routes, clusters,
//! endpoints and secrets.
//!
//! The server never builds resources: it consumes a `watch` channel of
//! [`MeshSnapshot`](traffic_translate::snapshot::MeshSnapshot)s from translation and, per stream,
//! asks the snapshot for the node's resources (shared `Arc`s) and works out what to send. The
//! protocol bookkeeping lives in pure state machines ([`sotw`], [`delta`]) that are unit-tested
//! without gRPC; [`server`] is the plumbing. Rejected configuration (NACK) is logged, counted and
//! handed to a [`RejectionSink`], and never sent again.

pub mod delta;
pub mod metrics;
pub mod rejection;
pub mod server;
pub mod sotw;

use std::collections::BTreeSet;
use std::sync::Arc;

pub use metrics::XdsMetrics;
pub use rejection::{IgnoreRejections, RejectionSink};
pub use server::{XdsServer, XdsServerError};
use traffic_translate::snapshot::{ObjectRef, Resource, Resources};
pub use traffic_translate::snapshot::{CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET};

/// The order types are pushed in after a snapshot change: what others refer to goes first
/// (make before break).
pub(crate) const ORDER: [&str; 5] = [SECRET, CLUSTER, ENDPOINT, LISTENER, ROUTE];

/// Listeners and clusters: SotW responses carry the complete subscribed set.
pub(crate) fn is_full_state(type_url: &str) -> bool {
    type_url == LISTENER || type_url == CLUSTER
}

/// A short name for a type URL, for logs and metric labels.
pub fn type_name(type_url: &str) -> &str {
    match type_url {
        LISTENER => "listener",
        ROUTE => "route",
        CLUSTER => "cluster",
        ENDPOINT => "endpoint",
        SECRET => "secret",
        other => other,
    }
}

/// A content hash (FNV-1a 64, hex) of a set of resources' names and versions: stable across
/// processes, so a proxy reconnecting to a restarted server with unchanged config is not re-sent.
pub(crate) fn set_version(resources: &Resources) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (name, res) in resources {
        for b in name.bytes().chain([0]).chain(res.version.bytes()).chain([0]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

/// The distinct origins of `resources`, sorted.
pub(crate) fn unique_origins<'a>(resources: impl Iterator<Item = &'a Arc<Resource>>) -> Vec<ObjectRef> {
    resources
        .filter_map(|r| r.origin.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use envoy_types::pb::google::protobuf::Any;
    use traffic_translate::snapshot::NodeResources;

    /// A fake resource whose body is `name@version`.
    pub fn res(type_url: &str, name: &str, version: &str) -> Arc<Resource> {
        Arc::new(Resource {
            name: name.to_string(),
            body: Any {
                type_url: type_url.to_string(),
                value: format!("{name}@{version}").into_bytes(),
            },
            version: version.to_string(),
            origin: Some(ObjectRef {
                kind: "Service".into(),
                namespace: "default".into(),
                name: name.into(),
            }),
        })
    }

    pub fn node_resources(items: &[(&'static str, &str, &str)]) -> NodeResources {
        let mut nr = NodeResources::default();
        for (t, n, v) in items {
            nr.by_type
                .entry(*t)
                .or_default()
                .insert(n.to_string(), res(t, n, v));
        }
        nr
    }
}

/// A snapshot giving every node the same resources: for tests, benchmarks and the fallback
/// (empty) configuration before the first model is translated.
#[derive(Debug, Clone, Default)]
pub struct StaticSnapshot(pub traffic_translate::snapshot::NodeResources);

impl traffic_translate::snapshot::MeshSnapshot for StaticSnapshot {
    fn for_node(&self, _node_id: &str) -> traffic_translate::snapshot::NodeResources {
        self.0.clone()
    }
}
