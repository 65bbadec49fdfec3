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
pub mod transport;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, Weak};

pub use metrics::XdsMetrics;
pub use rejection::{IgnoreRejections, RejectionSink};
pub use server::{XdsServer, XdsServerError};
use traffic_translate::snapshot::{NodeResources, ObjectRef, Resource, Resources};

/// One type's resources in a [`View`]: the map, its content version (computed once), and the
/// differences from older versions, computed once and shared by every stream that needs them.
#[derive(Debug)]
pub struct TypeView {
    pub resources: Arc<Resources>,
    /// [`set_version`] of `resources`.
    pub version: String,
    diffs: Mutex<HashMap<String, Arc<Vec<Arc<Resource>>>>>,
    /// Subscription name sets (interned, see [`NameSets`]) known to cover every resource.
    covering: Mutex<Vec<(Arc<BTreeSet<String>>, bool)>>,
}

impl Default for TypeView {
    fn default() -> Self {
        TypeView::new(Arc::default())
    }
}

impl TypeView {
    pub fn new(resources: Arc<Resources>) -> Self {
        let version = set_version(&resources);
        TypeView {
            resources,
            version,
            diffs: Mutex::default(),
            covering: Mutex::default(),
        }
    }

    /// Whether `names` subscribes to every resource of this view, computed once per interned
    /// set (with 1,000 streams subscribing to the same 1,000 names this is one check, not 1,000).
    pub fn covered_by(&self, names: &Arc<BTreeSet<String>>) -> bool {
        let compute =
            || names.len() >= self.resources.len() && self.resources.keys().all(|k| names.contains(k));
        let Ok(mut memo) = self.covering.lock() else {
            return compute();
        };
        if let Some((_, covers)) = memo.iter().find(|(set, _)| Arc::ptr_eq(set, names)) {
            return *covers;
        }
        let covers = compute();
        if memo.len() < 64 {
            memo.push((names.clone(), covers));
        }
        covers
    }

    /// The resources that are new or different compared to `old` (whose version is `old_version`).
    pub fn changed_since(&self, old: &Resources, old_version: &str) -> Arc<Vec<Arc<Resource>>> {
        let compute = || {
            Arc::new(
                self.resources
                    .iter()
                    .filter(|(name, r)| old.get(*name).is_none_or(|o| o.version != r.version))
                    .map(|(_, r)| r.clone())
                    .collect::<Vec<_>>(),
            )
        };
        let Ok(mut diffs) = self.diffs.lock() else {
            return compute();
        };
        diffs
            .entry(old_version.to_string())
            .or_insert_with(compute)
            .clone()
    }
}

/// One node's resources as streams hold them: each type's map behind an `Arc`, so every stream
/// of nodes sharing a view (see `MeshSnapshot::view_key`) points at the same maps.
#[derive(Debug, Default)]
pub struct View {
    by_type: HashMap<&'static str, Arc<TypeView>>,
}

impl View {
    pub fn get(&self, type_url: &str) -> Option<&Arc<TypeView>> {
        self.by_type.get(type_url)
    }
}

impl From<NodeResources> for View {
    fn from(nr: NodeResources) -> Self {
        View {
            by_type: nr
                .by_type
                .into_iter()
                .map(|(t, r)| (t, Arc::new(TypeView::new(Arc::new(r)))))
                .collect(),
        }
    }
}

/// Interns subscription name sets: 1,000 Envoys subscribing to the same 1,000 endpoint names
/// share one set instead of holding 1,000 copies.
#[derive(Debug, Default)]
pub struct NameSets(Mutex<HashMap<u64, Vec<Weak<BTreeSet<String>>>>>);

impl NameSets {
    pub fn intern(&self, names: &[String]) -> Arc<BTreeSet<String>> {
        // Order-insensitive key (Envoy may list names in any order).
        let key = names.iter().fold(names.len() as u64, |acc, n| {
            acc ^ fnv(n.as_bytes()).rotate_left(7)
        });
        let Ok(mut map) = self.0.lock() else {
            return Arc::new(names.iter().cloned().collect());
        };
        let bucket = map.entry(key).or_default();
        bucket.retain(|w| w.strong_count() > 0);
        for w in bucket.iter() {
            if let Some(set) = w.upgrade() {
                if set.len() == names.len() && names.iter().all(|n| set.contains(n)) {
                    return set;
                }
            }
        }
        let set: Arc<BTreeSet<String>> = Arc::new(names.iter().cloned().collect());
        bucket.push(Arc::downgrade(&set));
        set
    }
}

fn fnv(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}
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
pub fn set_version(resources: &Resources) -> String {
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

    pub fn node_resources(items: &[(&'static str, &str, &str)]) -> Arc<View> {
        let mut nr = NodeResources::default();
        for (t, n, v) in items {
            nr.by_type
                .entry(*t)
                .or_default()
                .insert(n.to_string(), res(t, n, v));
        }
        Arc::new(View::from(nr))
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
