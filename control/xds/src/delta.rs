//! Delta (incremental) ADS: the per-stream bookkeeping as a pure state machine (no I/O).
//!
//! Per type the stream tracks which names the proxy subscribed to (or the wildcard) and which
//! version of each resource the proxy holds (seeded from `initial_resource_versions`). A response
//! carries only resources whose version differs from the proxy's, and `removed_resources` for
//! those it holds that no longer exist (or that it asked for by name and that do not exist).
//!
//! Subscription changes are applied from every request, whatever its nonce: unlike SotW they are
//! incremental and would be lost otherwise. Every response awaiting an answer is remembered by
//! nonce, so a NACK is acted on even when newer responses were sent after the one it answers; a
//! nonce that is not one of them is stale and its ACK/NACK part is ignored (a NACK is still
//! counted). After a NACK the proxy is taken to still hold its previous version of each resource
//! of the rejected response (and the ones it removed); Envoy rejects a delta response as a whole,
//! so its resources are suspects that [`Quarantine`] narrows down by sending subsets, keeping only
//! the rejected one out until it changes.
//!
//! What the proxy holds is not a per-stream name -> version map (1,000 streams x 3,000 resources
//! was most of the server's memory) but a shared view map (`base`, the last one pushed) seen through
//! the subscription it was pushed for, plus the few names where the proxy differs from it (NACKed
//! versions, initial versions, unsubscribed names). A stream in step with its view gets the view's
//! difference to the next one, computed once and shared by every such stream.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use traffic_translate::snapshot::{Resource, Resources};

use crate::quarantine::{current_in, Quarantine, Verdict};
use crate::rejection::Rejection;
use crate::{
    is_full_state, EncodedResponse, NameSets, ResourceList, TypeView, View, CLUSTER, ENDPOINT, ORDER,
};

/// A response of a delta stream; its resources are shared with every stream sending the same.
#[derive(Debug, Clone)]
pub struct DeltaResponse {
    pub system_version_info: String,
    pub type_url: String,
    pub nonce: String,
    pub resources: Arc<ResourceList>,
    pub removed_resources: Vec<String>,
}

impl DeltaResponse {
    /// The protobuf message (decoded form; the server sends [`DeltaResponse::encode`]).
    pub fn to_message(&self) -> DeltaDiscoveryResponse {
        DeltaDiscoveryResponse {
            system_version_info: self.system_version_info.clone(),
            resources: self
                .resources
                .resources
                .iter()
                .map(|r| crate::wire_resource(r))
                .collect(),
            type_url: self.type_url.clone(),
            removed_resources: self.removed_resources.clone(),
            nonce: self.nonce.clone(),
            ..Default::default()
        }
    }

    /// The gRPC frames of the response, its resources encoded once for every stream.
    pub fn encode(&self) -> EncodedResponse {
        let head = DeltaDiscoveryResponse {
            system_version_info: self.system_version_info.clone(),
            type_url: self.type_url.clone(),
            removed_resources: self.removed_resources.clone(),
            nonce: self.nonce.clone(),
            ..Default::default()
        };
        EncodedResponse::new(&head, self.resources.delta_bytes())
    }
}

/// Which names of a type a stream wants.
#[derive(Debug, Clone, Default)]
struct Subscription {
    wildcard: bool,
    /// Names subscribed explicitly (interned: streams subscribing to the same names share one set).
    names: Arc<BTreeSet<String>>,
}

impl Subscription {
    fn covers(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }

    fn same(&self, other: &Subscription) -> bool {
        self.wildcard == other.wildcard
            && (Arc::ptr_eq(&self.names, &other.names) || self.names == other.names)
    }
}

/// What the proxy holds of one type, assuming it accepts what was sent.
#[derive(Debug, Clone, Default)]
struct Held {
    /// The type map of the view last pushed (or empty), whole and shared.
    base: Arc<Resources>,
    /// Its [`crate::set_version`] (empty for the empty map).
    base_version: String,
    /// The subscription `base` was pushed for: the proxy holds the resources of `base` it covers...
    base_sub: Subscription,
    /// ...except these: name -> the version it holds instead (None: it holds nothing).
    extra: BTreeMap<String, Option<String>>,
}

impl Held {
    fn version(&self, name: &str) -> Option<&str> {
        match self.extra.get(name) {
            Some(v) => v.as_deref(),
            None if self.base_sub.covers(name) => self.base.get(name).map(|r| r.version.as_str()),
            None => None,
        }
    }

    fn set(&mut self, name: &str, version: Option<String>) {
        let from_base = if self.base_sub.covers(name) {
            self.base.get(name).map(|r| &r.version)
        } else {
            None
        };
        if from_base == version.as_ref() {
            self.extra.remove(name);
        } else {
            self.extra.insert(name.to_string(), version);
        }
    }

    /// Every name the proxy holds, with its version.
    fn all(&self) -> BTreeMap<&str, &str> {
        let mut out: BTreeMap<&str, &str> = self
            .base
            .iter()
            .filter(|(n, _)| self.base_sub.covers(n))
            .map(|(n, r)| (n.as_str(), r.version.as_str()))
            .collect();
        for (n, v) in &self.extra {
            match v {
                Some(v) => {
                    out.insert(n, v);
                }
                None => {
                    out.remove(n.as_str());
                }
            }
        }
        out
    }
}

/// A response awaiting its ACK/NACK.
#[derive(Debug)]
struct InFlight {
    nonce: String,
    updated: Arc<ResourceList>,
    removed: Vec<String>,
    /// What the proxy held before it.
    before: Held,
}

#[derive(Debug, Default)]
struct TypeState {
    sub: Subscription,
    held: Held,
    /// Resources the proxy rejected, and suspects being narrowed down.
    quarantine: Quarantine,
    in_flight: VecDeque<InFlight>,
    /// Names subscribed explicitly that do not exist and were already reported as removed.
    announced_missing: BTreeSet<String>,
}

/// At most this many unanswered responses are remembered per type; older ones count as answered.
const MAX_IN_FLIGHT: usize = 64;

/// What a request did, for logging and metrics.
#[derive(Debug, Default)]
pub struct DeltaOutcome {
    pub responses: Vec<DeltaResponse>,
    pub acked: Option<String>,
    pub rejection: Option<Rejection>,
    pub stale: bool,
}

/// One delta ADS stream.
#[derive(Debug, Default)]
pub struct DeltaStream {
    types: HashMap<String, TypeState>,
    resources: Arc<View>,
    nonce: u64,
    /// `system_version_info` of responses: the generation of the resources last taken.
    system_version: String,
    names: Arc<NameSets>,
}

impl DeltaStream {
    pub fn new() -> Self {
        DeltaStream::default()
    }

    /// A stream interning its subscriptions' name sets in `names` (shared by the server's streams).
    pub fn with_name_sets(names: Arc<NameSets>) -> Self {
        DeltaStream {
            names,
            ..DeltaStream::default()
        }
    }

    pub fn resources(&self) -> &View {
        &self.resources
    }

    /// type URL -> number of resources kept out of this proxy's configuration.
    pub fn quarantined(&self) -> impl Iterator<Item = (&str, usize)> {
        self.types.iter().map(|(t, ts)| (t.as_str(), ts.quarantine.len()))
    }

    /// Handles one request from the proxy.
    pub fn on_request(&mut self, req: &DeltaDiscoveryRequest) -> DeltaOutcome {
        let type_url = req.type_url.as_str();
        let mut out = DeltaOutcome::default();
        let first = !self.types.contains_key(type_url);
        let ts = self.types.entry(type_url.to_string()).or_default();
        if first {
            for (k, v) in &req.initial_resource_versions {
                ts.held.extra.insert(k.clone(), Some(v.clone()));
            }
            // Legacy wildcard: a first request naming nothing, for listeners and clusters.
            ts.sub.wildcard = req.resource_names_subscribe.is_empty() && is_full_state(type_url);
        }
        let mut changed = first;
        if !req.response_nonce.is_empty() {
            match ts.in_flight.iter().position(|f| f.nonce == req.response_nonce) {
                None => {
                    out.stale = true;
                    if let Some(status) = &req.error_detail {
                        out.rejection = Some(Rejection {
                            type_url: type_url.to_string(),
                            nonce: req.response_nonce.clone(),
                            stale: true,
                            verdict: Verdict::Unexplained,
                            message: status.message.clone(),
                            kept_version: String::new(),
                        });
                    }
                }
                Some(pos) => {
                    // Older unanswered responses are implicitly answered.
                    let newer_sent = pos + 1 < ts.in_flight.len();
                    let answered = ts.in_flight.drain(..=pos).next_back();
                    if let Some(answered) = answered {
                        match &req.error_detail {
                            None => {
                                out.acked = Some(req.response_nonce.clone());
                                changed |= ts.quarantine.accepted(answered.updated.resources.iter());
                            }
                            Some(status) => {
                                let verdict = rejected(ts, &answered, &status.message);
                                changed |= verdict.changes_config();
                                out.rejection = Some(Rejection {
                                    type_url: type_url.to_string(),
                                    nonce: req.response_nonce.clone(),
                                    stale: newer_sent,
                                    verdict,
                                    message: status.message.clone(),
                                    kept_version: String::new(),
                                });
                            }
                        }
                    }
                }
            }
        }
        if !req.resource_names_subscribe.is_empty() || !req.resource_names_unsubscribe.is_empty() {
            changed = true;
            let mut names: BTreeSet<String> = (*ts.sub.names).clone();
            for name in &req.resource_names_subscribe {
                if name == "*" {
                    ts.sub.wildcard = true;
                } else {
                    names.insert(name.clone());
                }
            }
            for name in &req.resource_names_unsubscribe {
                if name == "*" {
                    ts.sub.wildcard = false;
                    // The proxy drops what it only had through the wildcard.
                    let dropped: Vec<String> = ts
                        .held
                        .all()
                        .into_keys()
                        .filter(|n| !names.contains(*n))
                        .map(str::to_string)
                        .collect();
                    for n in &dropped {
                        ts.held.set(n, None);
                    }
                } else {
                    names.remove(name);
                    ts.announced_missing.remove(name);
                    if !ts.sub.wildcard {
                        ts.held.set(name, None);
                    }
                }
            }
            ts.sub.names = self.names.intern_set(names);
        }
        if first {
            ts.held.base_sub = ts.sub.clone();
        }
        if changed {
            out.responses.extend(self.push(type_url, first));
            if type_url == CLUSTER {
                out.responses.extend(self.push(ENDPOINT, false));
            }
        }
        out
    }

    /// Takes a new set of resources (with its generation, reported as `system_version_info`) and
    /// returns the responses it causes, in make-before-break order.
    pub fn on_resources(&mut self, resources: Arc<View>, generation: u64) -> Vec<DeltaResponse> {
        self.resources = resources;
        self.system_version = generation.to_string();
        let mut out = Vec::new();
        for type_url in ORDER {
            out.extend(self.push(type_url, false));
        }
        let mut others: Vec<String> = self
            .types
            .keys()
            .filter(|t| !ORDER.contains(&t.as_str()))
            .cloned()
            .collect();
        others.sort();
        for type_url in others {
            out.extend(self.push(&type_url, false));
        }
        out
    }

    fn push(&mut self, type_url: &str, initial: bool) -> Option<DeltaResponse> {
        let tv: Arc<TypeView> = self.resources.get(type_url).cloned().unwrap_or_default();
        let ts = self.types.get_mut(type_url)?;
        if !ts.quarantine.is_empty() {
            // Forget rejections and suspicions the snapshot or the subscription has moved on
            // from (as SotW does).
            let sub = &ts.sub;
            ts.quarantine
                .retain(|r| current_in(&tv.resources, r) && sub.covers(&r.name));
        }
        let in_step = ts.held.extra.is_empty()
            && ts.quarantine.is_empty()
            && ts.held.base_sub.same(&ts.sub)
            && (ts.held.base.is_empty() || !ts.held.base_version.is_empty());
        let (updated, removed) = if in_step {
            push_in_step(ts, &tv)
        } else {
            push_general(ts, &tv.resources)
        };
        let before = std::mem::replace(
            &mut ts.held,
            Held {
                base: tv.resources.clone(),
                base_version: tv.version.clone(),
                base_sub: ts.sub.clone(),
                extra: BTreeMap::new(),
            },
        );
        // Rejected and held-back versions still in the snapshot were not sent: the proxy keeps
        // what it had.
        for r in ts.quarantine.withheld() {
            if tv.resources.get(&r.name).is_some_and(|c| c.version == r.version) && ts.sub.covers(&r.name) {
                let kept = before.version(&r.name).map(str::to_string);
                ts.held.set(&r.name, kept);
            }
        }
        if !ts.announced_missing.is_empty() {
            for r in &updated.resources {
                ts.announced_missing.remove(&r.name);
            }
        }
        if updated.is_empty() && removed.is_empty() && !(initial && ts.sub.wildcard) {
            return None;
        }
        let updated_clusters: Vec<String> = if type_url == CLUSTER {
            updated
                .resources
                .iter()
                .filter(|r| before.version(&r.name).is_some())
                .map(|r| r.name.clone())
                .collect()
        } else {
            Vec::new()
        };
        self.nonce += 1;
        let nonce = self.nonce.to_string();
        let response = DeltaResponse {
            system_version_info: self.system_version.clone(),
            resources: updated.clone(),
            type_url: type_url.to_string(),
            removed_resources: removed.clone(),
            nonce: nonce.clone(),
        };
        ts.in_flight.push_back(InFlight {
            nonce,
            updated,
            removed,
            before,
        });
        while ts.in_flight.len() > MAX_IN_FLIGHT {
            ts.in_flight.pop_front();
        }
        if let Some(eds) = self.types.get_mut(ENDPOINT) {
            // Envoy warms an updated cluster until its endpoints arrive again, even unchanged
            // (up to its 15 s initial fetch timeout): the endpoint push that follows re-sends them.
            for name in &updated_clusters {
                if eds.held.version(name).is_some() {
                    eds.held.set(name, None);
                }
            }
        }
        Some(response)
    }
}

/// A NACK of `answered`: the proxy keeps what it held before it (also in the `before` of the
/// responses sent after it), and its resources are suspects.
fn rejected(ts: &mut TypeState, answered: &InFlight, message: &str) -> Verdict {
    for res in &answered.updated.resources {
        if ts.held.version(&res.name) == Some(res.version.as_str()) {
            let prev = answered.before.version(&res.name).map(str::to_string);
            ts.held.set(&res.name, prev.clone());
            for later in &mut ts.in_flight {
                if later.before.version(&res.name) == Some(res.version.as_str()) {
                    later.before.set(&res.name, prev.clone());
                }
            }
        }
    }
    for name in &answered.removed {
        if ts.held.version(name).is_none() {
            let prev = answered.before.version(name).map(str::to_string);
            ts.held.set(name, prev);
        }
    }
    ts.quarantine
        .rejected(answered.updated.resources.clone(), message)
}

/// The push of a stream whose proxy holds exactly its last view (through an unchanged
/// subscription): the view's difference, shared when the subscription covers the whole view.
fn push_in_step(ts: &mut TypeState, tv: &TypeView) -> (Arc<ResourceList>, Vec<String>) {
    let changed = tv.changed_since(&ts.held.base, &ts.held.base_version);
    let gone = tv.removed_since(&ts.held.base, &ts.held.base_version);
    let updated = if ts.sub.wildcard || changed.is_empty() {
        changed
    } else {
        let names = &ts.sub.names;
        let all_subscribed = if changed.len() == tv.resources.len() {
            tv.covered_by(names)
        } else {
            changed.resources.iter().all(|r| names.contains(&r.name))
        };
        if all_subscribed {
            changed
        } else {
            Arc::new(ResourceList::new(
                changed
                    .resources
                    .iter()
                    .filter(|r| names.contains(&r.name))
                    .cloned()
                    .collect(),
            ))
        }
    };
    let removed: Vec<String> = gone.iter().filter(|n| ts.sub.covers(n)).cloned().collect();
    // Explicitly subscribed names that do not exist are reported once: those missing from the
    // last view already were, so only the ones that just went need remembering.
    for name in gone.iter() {
        if ts.sub.names.contains(name) {
            ts.announced_missing.insert(name.clone());
        }
    }
    let mut removed = removed;
    if ts.held.base.is_empty() {
        // The first push: every subscribed name that does not exist is reported.
        for name in ts.sub.names.iter() {
            if !tv.resources.contains_key(name) && ts.announced_missing.insert(name.clone()) {
                removed.push(name.clone());
            }
        }
    }
    (updated, removed)
}

/// The push of any other stream: every subscribed name compared with what the proxy holds.
fn push_general(ts: &mut TypeState, all: &Resources) -> (Arc<ResourceList>, Vec<String>) {
    let mut updated: Vec<Arc<Resource>> = Vec::new();
    {
        let state: &TypeState = ts;
        let mut consider = |name: &String, res: &Arc<Resource>| {
            if state.quarantine.admits(res) && state.held.version(name) != Some(res.version.as_str()) {
                updated.push(res.clone());
            }
        };
        if state.sub.wildcard {
            for (name, res) in all {
                consider(name, res);
            }
        } else {
            for name in state.sub.names.iter() {
                if let Some(res) = all.get(name) {
                    consider(name, res);
                }
            }
        }
    }
    let held = ts.held.all();
    let mut removed: Vec<String> = held
        .keys()
        .filter(|n| !all.contains_key(**n) || !ts.sub.covers(n))
        .map(|n| n.to_string())
        .collect();
    // Explicitly subscribed names that do not exist are reported once (those the proxy held are
    // in `removed` already).
    for name in ts.sub.names.iter() {
        if !all.contains_key(name)
            && ts.announced_missing.insert(name.clone())
            && !held.contains_key(name.as_str())
        {
            removed.push(name.clone());
        }
    }
    (Arc::new(ResourceList::new(updated)), removed)
}

#[cfg(test)]
mod tests;
