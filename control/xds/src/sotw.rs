//! State-of-the-world ADS: the per-stream bookkeeping as a pure state machine (no I/O).
//!
//! Rules (xDS protocol, "ACK/NACK and resource type instance version"):
//! - Per type, only a request whose `response_nonce` is the last nonce sent on this stream for that
//!   type is acted on; older nonces are stale and ignored (the proxy will repeat its subscription
//!   with the newest nonce once it has processed the newer response).
//! - ACK = matching nonce, no `error_detail`; NACK = matching nonce with `error_detail`.
//! - Listeners and clusters are "full state": every response carries the whole subscribed set.
//!   Routes, endpoints and secrets are requested by name and a response carries only the resources
//!   that changed.
//! - A NACK is acted on whatever its nonce: the stream remembers its last few responses by nonce,
//!   so a NACK of an older response (answered while newer config was already on its way) still
//!   names what the proxy could not take. The resources that response introduced (those differing
//!   from the set of the version the proxy reports holding) are the suspects; [`Quarantine`] narrows
//!   them down by sending subsets and keeps the culprit out. A rejected resource is never sent again
//!   at the same version: the proxy keeps its last accepted copy (full-state responses carry that
//!   copy instead), and everything else is pushed as usual.
//! - `version_info` is a content hash of the whole set the proxy holds after applying the response,
//!   so a proxy reconnecting with the current version gets no redundant response.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
use traffic_translate::snapshot::{Resource, Resources};

use crate::quarantine::{current_in, Quarantine};
use crate::rejection::Rejection;
use crate::request::{EncodedNames, NameList, SotwRequest};
use crate::{
    is_full_state, set_version, EncodedResponse, NameSets, ResourceList, TypeView, View, CLUSTER, ENDPOINT,
    ORDER,
};

/// A response of a SotW stream; its resources are shared with every stream sending the same.
#[derive(Debug, Clone)]
pub struct SotwResponse {
    pub version_info: String,
    pub type_url: String,
    pub nonce: String,
    pub resources: Arc<ResourceList>,
}

impl PartialEq for SotwResponse {
    fn eq(&self, other: &Self) -> bool {
        self.version_info == other.version_info
            && self.type_url == other.type_url
            && self.nonce == other.nonce
            && self.resources.resources == other.resources.resources
    }
}

impl SotwResponse {
    /// The protobuf message (decoded form; the server sends [`SotwResponse::encode`]).
    pub fn to_message(&self) -> DiscoveryResponse {
        DiscoveryResponse {
            version_info: self.version_info.clone(),
            resources: self.resources.resources.iter().map(|r| r.body.clone()).collect(),
            type_url: self.type_url.clone(),
            nonce: self.nonce.clone(),
            ..Default::default()
        }
    }

    /// The gRPC frames of the response, its resources encoded once for every stream.
    pub fn encode(&self) -> EncodedResponse {
        let head = DiscoveryResponse {
            version_info: self.version_info.clone(),
            type_url: self.type_url.clone(),
            nonce: self.nonce.clone(),
            ..Default::default()
        };
        EncodedResponse::new(&head, self.resources.sotw_bytes())
    }
}

/// Which names of a type a stream wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Subscription {
    Wildcard,
    /// Interned: streams asking for the same names share one set.
    Names(Arc<BTreeSet<String>>),
}

impl Subscription {
    /// `first`: this is the stream's first request for the type, where an empty list means
    /// "everything" for listeners and clusters (legacy wildcard).
    fn from_request(type_url: &str, names: &NameList, first_or_wildcard: bool, sets: &NameSets) -> Self {
        if names.iter_bytes().any(|n| n == b"*")
            || (names.is_empty() && first_or_wildcard && is_full_state(type_url))
        {
            Subscription::Wildcard
        } else {
            Subscription::Names(sets.intern(names))
        }
    }

    /// Whether every resource of `tv` is subscribed (remembered per view and name set: the
    /// streams sharing both ask once).
    fn covers_all(&self, tv: &TypeView) -> bool {
        match self {
            Subscription::Wildcard => true,
            Subscription::Names(set) => tv.covered_by(set),
        }
    }

    /// Whether a request naming `names` leaves the subscription as it is (checked without
    /// building a set: an Envoy ACK repeats every subscribed name).
    fn same_as_request(&self, type_url: &str, names: &NameList, first_or_wildcard: bool) -> bool {
        let wildcard = names.iter_bytes().any(|n| n == b"*")
            || (names.is_empty() && first_or_wildcard && is_full_state(type_url));
        match self {
            Subscription::Wildcard => wildcard,
            Subscription::Names(set) => {
                !wildcard
                    && set.len() == names.len()
                    // Sorted requests (the usual case) compare in one pass without lookups.
                    && (set.iter().zip(names.iter_bytes()).all(|(a, b)| a.as_bytes() == b)
                        || names.iter().all(|n| set.contains(n)))
            }
        }
    }

    fn contains(&self, name: &str) -> bool {
        match self {
            Subscription::Wildcard => true,
            Subscription::Names(names) => names.contains(name),
        }
    }

    /// The subscribed subset of `all`.
    fn select<'a>(
        &'a self,
        all: &'a Resources,
    ) -> Box<dyn Iterator<Item = (&'a String, &'a Arc<Resource>)> + 'a> {
        match self {
            Subscription::Wildcard => Box::new(all.iter()),
            Subscription::Names(names) => Box::new(names.iter().filter_map(|n| all.get_key_value(n))),
        }
    }
}

/// A response as the stream remembers it, to interpret the proxy's answer to it.
#[derive(Debug, Clone)]
struct Sent {
    /// Empty for a set the proxy reported holding when it connected (no response was sent).
    nonce: String,
    version: String,
    /// What the proxy holds once it accepts the response.
    set: Arc<Resources>,
    /// The resources the response carried.
    pushed: Arc<ResourceList>,
}

#[derive(Debug)]
struct TypeState {
    subscription: Subscription,
    /// Nonce of the last response sent for this type ("" before the first).
    last_nonce: String,
    /// What the proxy holds if it accepts everything sent so far (usually the snapshot's own map).
    sent: Arc<Resources>,
    sent_version: String,
    /// `sent` is a whole type map of a view (so diffs between views apply).
    sent_whole: bool,
    /// What the proxy held at its last answer.
    acked: Arc<Resources>,
    acked_version: String,
    /// Resources the proxy rejected, and suspects being narrowed down.
    quarantine: Quarantine,
    /// The last few responses, newest last: an answer names a nonce (which response it is about)
    /// and a version (which set the proxy holds), even when it is stale.
    history: VecDeque<Sent>,
    /// The name list (as encoded) of the last request found to match `subscription`: a request
    /// repeating it (every ACK) leaves the subscription as it is without a name-by-name check.
    known_names: Option<Arc<EncodedNames>>,
}

/// Responses remembered per type for answers to arrive late.
const HISTORY: usize = 8;

impl TypeState {
    fn new(subscription: Subscription) -> Self {
        TypeState {
            subscription,
            last_nonce: String::new(),
            sent: Arc::default(),
            sent_version: String::new(),
            sent_whole: false,
            acked: Arc::default(),
            acked_version: String::new(),
            quarantine: Quarantine::default(),
            history: VecDeque::new(),
            known_names: None,
        }
    }

    fn remember(&mut self, sent: Sent) {
        self.history.push_back(sent);
        while self.history.len() > HISTORY {
            self.history.pop_front();
        }
    }

    /// Takes the set of `version` (from the history) as what the proxy holds, if known.
    fn holds_version(&mut self, version: &str) {
        if let Some(h) = self.history.iter().rev().find(|h| h.version == version) {
            self.acked = h.set.clone();
            self.acked_version = h.version.clone();
        } else if version.is_empty() {
            self.acked = Arc::default();
            self.acked_version = String::new();
        }
    }

    /// The subscribed resources as they should be on the proxy: the snapshot's, except that a
    /// rejected version is replaced by the last accepted copy (or left out). Without rejections
    /// and with everything subscribed this is the snapshot's map itself (shared, not copied).
    fn desired(&mut self, tv: &TypeView) -> Arc<Resources> {
        let all = &tv.resources;
        if !self.quarantine.is_empty() {
            // Forget rejections and suspicions the snapshot or the subscription has moved on from.
            let sub = &self.subscription;
            self.quarantine
                .retain(|r| current_in(all, r) && sub.contains(&r.name));
        }
        if self.quarantine.is_empty() && self.subscription.covers_all(tv) {
            return all.clone();
        }
        let mut desired = Resources::new();
        for (name, res) in self.subscription.select(all) {
            if self.quarantine.admits(res) {
                desired.insert(name.clone(), res.clone());
            } else if let Some(kept) = self.acked.get(name).filter(|k| self.quarantine.admits(k)) {
                // The last accepted copy, unless the proxy is only taken to hold it.
                desired.insert(name.clone(), kept.clone());
            }
        }
        Arc::new(desired)
    }
}

/// What a request did, for logging and metrics.
#[derive(Debug, Default, PartialEq)]
pub struct RequestOutcome {
    pub responses: Vec<SotwResponse>,
    /// The request acknowledged the nonce it carried.
    pub acked: Option<String>,
    pub rejection: Option<Rejection>,
    /// The request carried an old or unknown nonce and was ignored.
    pub stale: bool,
}

/// One SotW ADS stream.
#[derive(Debug, Default)]
pub struct SotwStream {
    types: HashMap<String, TypeState>,
    resources: Arc<View>,
    nonce: u64,
    names: Arc<NameSets>,
    /// Every type's `known_names`, for [`crate::request::decode_sotw_with`].
    known_names: Vec<Arc<EncodedNames>>,
}

impl SotwStream {
    pub fn new() -> Self {
        SotwStream::default()
    }

    /// A stream interning its subscriptions' name sets in `names` (shared by the server's streams).
    pub fn with_name_sets(names: Arc<NameSets>) -> Self {
        SotwStream {
            names,
            ..SotwStream::default()
        }
    }

    /// The resources currently offered to this stream's node.
    pub fn resources(&self) -> &View {
        &self.resources
    }

    /// The name lists this stream's subscriptions were last requested with: pass them to
    /// [`crate::request::decode_sotw_with`] so that a request repeating one is recognised at once.
    pub fn known_names(&self) -> &[Arc<EncodedNames>] {
        &self.known_names
    }

    fn names_known(&mut self) {
        self.known_names = self
            .types
            .values()
            .filter_map(|ts| ts.known_names.clone())
            .collect();
    }

    /// `names` interned, if any (an empty list is cheap to check as it is).
    fn intern_names(sets: &NameSets, names: &NameList) -> Option<Arc<EncodedNames>> {
        (!names.is_empty()).then(|| sets.intern_encoded(names))
    }

    /// type URL -> number of resources kept out of this proxy's configuration.
    pub fn quarantined(&self) -> impl Iterator<Item = (&str, usize)> {
        self.types.iter().map(|(t, ts)| (t.as_str(), ts.quarantine.len()))
    }

    /// Handles one request from the proxy.
    pub fn on_request(&mut self, request: &SotwRequest) -> RequestOutcome {
        let req = &request.message;
        let names = &request.names;
        let type_url = req.type_url.as_str();
        let mut out = RequestOutcome::default();
        if req.response_nonce.is_empty() {
            // A new subscription for this type (first request on the stream).
            let sub = Subscription::from_request(type_url, names, true, &self.names);
            let mut ts = TypeState::new(sub);
            ts.known_names = Self::intern_names(&self.names, names);
            let tv = self.resources.get(type_url).cloned().unwrap_or_default();
            let desired = ts.desired(&tv);
            let version = set_version(&desired);
            if !req.version_info.is_empty() && req.version_info == version {
                // The proxy already holds exactly this (reconnect): nothing to send.
                ts.remember(Sent {
                    nonce: String::new(),
                    version: version.clone(),
                    set: desired.clone(),
                    pushed: Arc::default(),
                });
                ts.sent = desired.clone();
                ts.sent_version = version.clone();
                ts.acked = desired;
                ts.acked_version = version;
                self.types.insert(type_url.to_string(), ts);
                self.names_known();
                return out;
            }
            self.types.insert(type_url.to_string(), ts);
            self.names_known();
            out.responses.extend(self.push(type_url, true));
            return out;
        }
        let Some(ts) = self.types.get_mut(type_url) else {
            out.stale = true;
            return out;
        };
        let latest = req.response_nonce == ts.last_nonce;
        out.stale = !latest;
        let answered = ts
            .history
            .iter()
            .rev()
            .find(|h| h.nonce == req.response_nonce)
            .cloned();
        let mut push = false;
        match (&req.error_detail, answered) {
            (Some(status), answered) => {
                // What the proxy still holds: the set of the version it reports, when known.
                ts.holds_version(&req.version_info);
                // Suspects: what the answered response carried that the proxy does not hold.
                let suspects: Vec<Arc<Resource>> = answered
                    .iter()
                    .flat_map(|a| a.pushed.resources.iter())
                    .filter(|r| ts.acked.get(&r.name).is_none_or(|a| a.version != r.version))
                    .cloned()
                    .collect();
                let verdict = ts.quarantine.rejected(suspects, &status.message);
                // A stale NACK changes nothing in flight unless it teaches something: the newest
                // response may still be accepted.
                if latest || verdict.changes_config() {
                    ts.sent = ts.acked.clone();
                    ts.sent_version = ts.acked_version.clone();
                    ts.sent_whole = false;
                    push = verdict != crate::quarantine::Verdict::Unexplained;
                }
                out.rejection = Some(Rejection {
                    type_url: type_url.to_string(),
                    nonce: req.response_nonce.clone(),
                    stale: !latest,
                    verdict,
                    message: status.message.clone(),
                    kept_version: req.version_info.clone(),
                });
            }
            (None, Some(answered)) => {
                push = ts.quarantine.accepted(answered.pushed.resources.iter());
                if latest {
                    ts.acked = ts.sent.clone();
                    ts.acked_version = ts.sent_version.clone();
                    out.acked = Some(req.response_nonce.clone());
                }
            }
            (None, None) => {}
        }
        // A request repeating the names last found to match the subscription (every ACK) is known
        // to leave it as it is.
        let known = match (names.encoded(), &ts.known_names) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        };
        if latest && !known {
            let first_or_wildcard = ts.subscription == Subscription::Wildcard;
            if !ts
                .subscription
                .same_as_request(type_url, names, first_or_wildcard)
            {
                ts.subscription = Subscription::from_request(type_url, names, first_or_wildcard, &self.names);
                push = true;
            }
            ts.known_names = Self::intern_names(&self.names, names);
            self.names_known();
        }
        if push {
            out.responses.extend(self.push(type_url, false));
            if type_url == CLUSTER {
                // Clusters updated by this push need their endpoints again.
                out.responses.extend(self.push(ENDPOINT, false));
            }
        }
        out
    }

    /// Takes a new set of resources for this node and returns the responses it causes, in
    /// make-before-break order (secrets, clusters, endpoints, listeners, routes).
    pub fn on_resources(&mut self, resources: Arc<View>) -> Vec<SotwResponse> {
        self.resources = resources;
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

    /// The response `type_url` needs now, if any. `initial`: answer even when nothing changed
    /// (the first response to a full-state subscription, which the proxy waits for).
    fn push(&mut self, type_url: &str, initial: bool) -> Option<SotwResponse> {
        let tv = self.resources.get(type_url).cloned().unwrap_or_default();
        let all = &tv.resources;
        let ts = self.types.get_mut(type_url)?;
        if !initial && ts.quarantine.is_empty() && ts.sent_whole && ts.sent_version == tv.version {
            // Same content as what the proxy holds: adopt the new map so the old one can go.
            ts.sent = all.clone();
            return None;
        }
        let desired = ts.desired(&tv);
        let whole = Arc::ptr_eq(&desired, all);
        let version = if whole {
            tv.version.clone()
        } else {
            set_version(&desired)
        };
        let pushed: Arc<ResourceList> = if is_full_state(type_url) {
            if !initial && version == ts.sent_version {
                ts.sent = desired;
                ts.sent_whole = whole;
                return None;
            }
            if whole {
                tv.all()
            } else {
                Arc::new(ResourceList::new(desired.values().cloned().collect()))
            }
        } else {
            let changed: Arc<ResourceList> = if whole && (ts.sent_whole || ts.sent.is_empty()) {
                tv.changed_since(&ts.sent, &ts.sent_version)
            } else {
                Arc::new(ResourceList::new(
                    desired
                        .iter()
                        .filter(|(name, r)| ts.sent.get(*name).is_none_or(|s| s.version != r.version))
                        .map(|(_, r)| r.clone())
                        .collect(),
                ))
            };
            if changed.is_empty() {
                // Forget names that left the snapshot so they are sent again if they come back.
                ts.sent = desired;
                ts.sent_version = version;
                ts.sent_whole = whole;
                return None;
            }
            changed
        };
        let updated_clusters: Vec<String> = if type_url == CLUSTER {
            desired
                .iter()
                .filter(|(n, r)| ts.sent.get(*n).is_some_and(|s| s.version != r.version))
                .map(|(n, _)| n.clone())
                .collect()
        } else {
            Vec::new()
        };
        ts.sent_whole = whole;
        self.nonce += 1;
        let nonce = self.nonce.to_string();
        ts.remember(Sent {
            nonce: nonce.clone(),
            version: version.clone(),
            set: desired.clone(),
            pushed: pushed.clone(),
        });
        ts.sent = desired;
        ts.sent_version = version.clone();
        ts.last_nonce = nonce.clone();
        let response = SotwResponse {
            version_info: version,
            resources: pushed,
            type_url: type_url.to_string(),
            nonce,
        };
        if !updated_clusters.is_empty() {
            self.forget_endpoints(&updated_clusters);
        }
        Some(response)
    }

    /// Envoy warms an updated cluster until its endpoints arrive again, even when they did not
    /// change (up to its 15 s initial fetch timeout, measured with the NACK tests): forget that
    /// the proxy has them, so the endpoint push that follows the cluster push re-sends them.
    fn forget_endpoints(&mut self, clusters: &[String]) {
        let Some(eds) = self.types.get_mut(ENDPOINT) else {
            return;
        };
        if !clusters.iter().any(|c| eds.sent.contains_key(c)) {
            return;
        }
        let mut sent = (*eds.sent).clone();
        for c in clusters {
            sent.remove(c);
        }
        eds.sent_version = set_version(&sent);
        eds.sent = Arc::new(sent);
        eds.sent_whole = false;
    }
}

#[cfg(test)]
mod tests;
