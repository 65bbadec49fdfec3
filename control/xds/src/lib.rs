//! The xDS server: Envoy's aggregated discovery service (ADS) over tonic, in both the
//! state-of-the-world and the delta (incremental) variants, for listeners, routes, clusters,
//! endpoints and secrets.
//!
//! The server never builds resources: it consumes a `watch` channel of
//! [`MeshSnapshot`](traffic_translate::snapshot::MeshSnapshot)s from translation and, per stream,
//! asks the snapshot for the node's resources (shared `Arc`s) and works out what to send. The
//! protocol bookkeeping lives in pure state machines ([`sotw`], [`delta`]) that are unit-tested
//! without gRPC; [`server`] is the plumbing. When a proxy rejects configuration (NACK), the stream
//! finds the rejected resources ([`quarantine`]) and keeps only those out of that proxy's
//! configuration until they change; every NACK is logged and counted, and each rejected resource
//! is handed to a [`RejectionSink`] (an Event on its origin object).

pub mod admission;
pub mod delta;
pub mod metrics;
pub mod quarantine;
pub mod rejection;
pub mod request;
pub mod server;
pub mod sotw;
pub mod transport;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use bytes::Bytes;
use envoy_types::pb::envoy::service::discovery::v3::Resource as WireResource;
use prost::Message;

pub use admission::{Admission, Admit, AdmitFuture, Credentials, Refusal, RefusalCode};
pub use metrics::XdsMetrics;
pub use rejection::{IgnoreRejections, RejectionSink};
pub use server::{XdsServer, XdsServerError};
use traffic_translate::snapshot::{NodeResources, Resource, Resources};

/// Resources as the `resources` field of a response, encoded at most once per wire format and
/// shared by every stream that sends exactly these (1,000 streams getting the same 1,000 endpoint
/// assignments share one encoding instead of holding 1,000 copies in their send queues).
#[derive(Debug, Default)]
pub struct ResourceList {
    pub resources: Vec<Arc<Resource>>,
    sotw: OnceLock<Bytes>,
    delta: OnceLock<Bytes>,
}

impl ResourceList {
    pub fn new(resources: Vec<Arc<Resource>>) -> Self {
        ResourceList {
            resources,
            ..ResourceList::default()
        }
    }

    pub fn len(&self) -> usize {
        self.resources.len()
    }

    pub fn is_empty(&self) -> bool {
        self.resources.is_empty()
    }

    /// Field 2 of `DiscoveryResponse` (repeated `Any`), encoded.
    pub fn sotw_bytes(&self) -> Bytes {
        self.sotw
            .get_or_init(|| {
                let len: usize = self
                    .resources
                    .iter()
                    .map(|r| prost::encoding::message::encoded_len(2, &r.body))
                    .sum();
                let mut buf = Vec::with_capacity(len);
                for r in &self.resources {
                    prost::encoding::message::encode(2, &r.body, &mut buf);
                }
                Bytes::from(buf)
            })
            .clone()
    }

    /// Field 2 of `DeltaDiscoveryResponse` (repeated `Resource` with name, version and body),
    /// encoded.
    pub fn delta_bytes(&self) -> Bytes {
        self.delta
            .get_or_init(|| {
                let mut buf = Vec::new();
                for r in &self.resources {
                    prost::encoding::message::encode(2, &wire_resource(r), &mut buf);
                }
                Bytes::from(buf)
            })
            .clone()
    }
}

/// A resource as a delta response carries it.
pub(crate) fn wire_resource(r: &Resource) -> WireResource {
    WireResource {
        name: r.name.clone(),
        version: r.version.clone(),
        resource: Some(r.body.clone()),
        ..Default::default()
    }
}

/// A response message encoded as gRPC frames: the per-stream fields (version, nonce, ...) with
/// the length prefix of the whole message, then the shared `resources` field.
#[derive(Debug, Clone)]
pub struct EncodedResponse {
    pub head: Bytes,
    pub body: Bytes,
}

impl EncodedResponse {
    /// `head_fields` (a message without its resources) followed by `body` (encoded resources).
    pub(crate) fn new<M: Message>(head_fields: &M, body: Bytes) -> Self {
        let len = head_fields.encoded_len() + body.len();
        let mut head = Vec::with_capacity(5 + head_fields.encoded_len());
        head.push(0); // not compressed
        head.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
        head_fields.encode_raw(&mut head);
        EncodedResponse {
            head: Bytes::from(head),
            body,
        }
    }
}

/// Most entries each of a type view's memos keeps (covering sets, diffs, removals).
const MEMO_LIMIT: usize = 64;

/// One type's resources in a [`View`]: the map, its content version (computed once), and the
/// differences from older versions, computed once and shared by every stream that needs them.
#[derive(Debug)]
pub struct TypeView {
    pub resources: Arc<Resources>,
    /// [`set_version`] of `resources`.
    pub version: String,
    /// Every resource, as one shared list.
    all: OnceLock<Arc<ResourceList>>,
    diffs: Mutex<HashMap<String, Arc<ResourceList>>>,
    removals: Mutex<HashMap<String, Arc<Vec<String>>>>,
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
            all: OnceLock::new(),
            diffs: Mutex::default(),
            removals: Mutex::default(),
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
        if memo.len() < MEMO_LIMIT {
            memo.push((names.clone(), covers));
        }
        covers
    }

    /// The names of `old` (whose version is `old_version`) that this view no longer has.
    pub fn removed_since(&self, old: &Resources, old_version: &str) -> Arc<Vec<String>> {
        let compute = || {
            Arc::new(
                old.keys()
                    .filter(|n| !self.resources.contains_key(*n))
                    .cloned()
                    .collect::<Vec<_>>(),
            )
        };
        if old.is_empty() {
            return Arc::default();
        }
        let Ok(mut memo) = self.removals.lock() else {
            return compute();
        };
        if let Some(r) = memo.get(old_version) {
            return r.clone();
        }
        let r = compute();
        // Bounded: a type view unchanged over many snapshots is kept (see `View::reusing`).
        if memo.len() < MEMO_LIMIT {
            memo.insert(old_version.to_string(), r.clone());
        }
        r
    }

    /// Every resource of the view, in name order, as one shared list.
    pub fn all(&self) -> Arc<ResourceList> {
        self.all
            .get_or_init(|| Arc::new(ResourceList::new(self.resources.values().cloned().collect())))
            .clone()
    }

    /// The resources that are new or different compared to `old` (whose version is `old_version`).
    pub fn changed_since(&self, old: &Resources, old_version: &str) -> Arc<ResourceList> {
        if old.is_empty() {
            return self.all();
        }
        let compute = || {
            Arc::new(ResourceList::new(
                self.resources
                    .iter()
                    .filter(|(name, r)| old.get(*name).is_none_or(|o| o.version != r.version))
                    .map(|(_, r)| r.clone())
                    .collect::<Vec<_>>(),
            ))
        };
        let Ok(mut diffs) = self.diffs.lock() else {
            return compute();
        };
        if let Some(d) = diffs.get(old_version) {
            return d.clone();
        }
        let d = compute();
        if diffs.len() < MEMO_LIMIT {
            diffs.insert(old_version.to_string(), d.clone());
        }
        d
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

    /// The view of `nr`, keeping `prev`'s type view (its version, encodings and diffs) for every
    /// type whose resources are the same allocation as there: after an endpoint change only the
    /// endpoint type is versioned and encoded again.
    pub fn reusing(nr: NodeResources, prev: Option<&View>) -> Self {
        View {
            by_type: nr
                .by_type
                .into_iter()
                .map(|(t, r)| {
                    let kept = prev
                        .and_then(|p| p.by_type.get(t))
                        .filter(|tv| Arc::ptr_eq(&tv.resources, &r))
                        .cloned();
                    (t, kept.unwrap_or_else(|| Arc::new(TypeView::new(r))))
                })
                .collect(),
        }
    }
}

impl From<NodeResources> for View {
    fn from(nr: NodeResources) -> Self {
        View::reusing(nr, None)
    }
}

/// Interns subscription name sets: 1,000 Envoys subscribing to the same 1,000 endpoint names
/// share one set instead of holding 1,000 copies. Also interns name lists as requests encode them
/// ([`request::EncodedNames`]).
#[derive(Debug, Default)]
pub struct NameSets(
    Mutex<HashMap<u64, Vec<Weak<BTreeSet<String>>>>>,
    Mutex<HashMap<u64, Vec<Weak<request::EncodedNames>>>>,
);

impl NameSets {
    /// `names` as a request encodes them, shared with every stream that sent the same list.
    pub fn intern_encoded(&self, names: &request::NameList) -> Arc<request::EncodedNames> {
        if let Some(e) = names.encoded() {
            return e.clone();
        }
        let encoded = request::EncodedNames::new(names);
        let key = fnv(encoded.bytes());
        let Ok(mut map) = self.1.lock() else {
            return Arc::new(encoded);
        };
        let bucket = map.entry(key).or_default();
        bucket.retain(|w| w.strong_count() > 0);
        if let Some(same) = bucket
            .iter()
            .filter_map(Weak::upgrade)
            .find(|e| e.bytes() == encoded.bytes())
        {
            return same;
        }
        let e = Arc::new(encoded);
        bucket.push(Arc::downgrade(&e));
        e
    }

    pub fn intern(&self, names: &request::NameList) -> Arc<BTreeSet<String>> {
        // Order-insensitive key (Envoy may list names in any order).
        let key = names.iter().fold(names.len() as u64, |acc, n| {
            acc ^ fnv(n.as_bytes()).rotate_left(7)
        });
        let Ok(mut map) = self.0.lock() else {
            return Arc::new(names.iter().map(str::to_string).collect());
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
        let set: Arc<BTreeSet<String>> = Arc::new(names.iter().map(str::to_string).collect());
        bucket.push(Arc::downgrade(&set));
        set
    }

    /// `names`, or the equal set already interned.
    pub fn intern_set(&self, names: BTreeSet<String>) -> Arc<BTreeSet<String>> {
        let key = names.iter().fold(names.len() as u64, |acc, n| {
            acc ^ fnv(n.as_bytes()).rotate_left(7)
        });
        let Ok(mut map) = self.0.lock() else {
            return Arc::new(names);
        };
        let bucket = map.entry(key).or_default();
        bucket.retain(|w| w.strong_count() > 0);
        for w in bucket.iter() {
            if let Some(set) = w.upgrade() {
                if *set == names {
                    return set;
                }
            }
        }
        let set = Arc::new(names);
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
            origin: Some(traffic_translate::snapshot::ObjectRef {
                kind: "Service".into(),
                namespace: "default".into(),
                name: name.into(),
            }),
        })
    }

    pub fn node_resources(items: &[(&'static str, &str, &str)]) -> Arc<View> {
        let mut nr = NodeResources::default();
        for (t, n, v) in items {
            nr.make_mut(t).insert(n.to_string(), res(t, n, v));
        }
        Arc::new(View::from(nr))
    }

    #[test]
    fn a_type_whose_map_is_the_same_allocation_keeps_its_type_view() {
        use traffic_translate::snapshot::{CLUSTER, ENDPOINT};
        let mut nr = NodeResources::default();
        nr.make_mut(CLUSTER).insert("a".into(), res(CLUSTER, "a", "1"));
        nr.make_mut(ENDPOINT).insert("a".into(), res(ENDPOINT, "a", "1"));
        let first = View::from(nr.clone());
        // An endpoint change: the cluster map is shared, the endpoint map copied on write.
        nr.make_mut(ENDPOINT).insert("a".into(), res(ENDPOINT, "a", "2"));
        let second = View::reusing(nr.clone(), Some(&first));
        let (c1, c2) = (first.get(CLUSTER).expect("c"), second.get(CLUSTER).expect("c"));
        assert!(Arc::ptr_eq(c1, c2), "unchanged type view kept");
        let (e1, e2) = (first.get(ENDPOINT).expect("e"), second.get(ENDPOINT).expect("e"));
        assert!(!Arc::ptr_eq(e1, e2));
        assert_ne!(e1.version, e2.version);
        // Equal content in a different allocation is versioned again, to the same version.
        let mut copy = NodeResources::default();
        copy.insert(CLUSTER, (**nr.by_type.get(CLUSTER).expect("c")).clone());
        let third = View::reusing(copy, Some(&second));
        let c3 = third.get(CLUSTER).expect("c");
        assert!(!Arc::ptr_eq(c2, c3));
        assert_eq!(c2.version, c3.version);
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
