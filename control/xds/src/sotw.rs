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

use crate::quarantine::Quarantine;
use crate::rejection::Rejection;
use crate::request::{NameList, SotwRequest};
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
}

/// Responses remembered per type for answers to arrive late.
const HISTORY: usize = 16;

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
            // Forget rejections and suspicions the snapshot has moved on from.
            self.quarantine.retain_current(all);
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
                return out;
            }
            self.types.insert(type_url.to_string(), ts);
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
        if latest {
            let first_or_wildcard = ts.subscription == Subscription::Wildcard;
            if !ts
                .subscription
                .same_as_request(type_url, names, first_or_wildcard)
            {
                ts.subscription = Subscription::from_request(type_url, names, first_or_wildcard, &self.names);
                push = true;
            }
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
mod tests {
    use super::*;
    use crate::testing::node_resources;
    use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
    use envoy_types::pb::google::rpc::Status;

    fn request(type_url: &str, names: &[&str], version: &str, nonce: &str) -> DiscoveryRequest {
        DiscoveryRequest {
            type_url: type_url.to_string(),
            resource_names: names.iter().map(|s| s.to_string()).collect(),
            version_info: version.to_string(),
            response_nonce: nonce.to_string(),
            ..Default::default()
        }
    }

    fn req(type_url: &str, names: &[&str], version: &str, nonce: &str) -> SotwRequest {
        request(type_url, names, version, nonce).into()
    }

    fn nack(type_url: &str, names: &[&str], version: &str, nonce: &str) -> SotwRequest {
        DiscoveryRequest {
            error_detail: Some(Status {
                code: 3,
                message: "bad cluster".into(),
                details: vec![],
            }),
            ..request(type_url, names, version, nonce)
        }
        .into()
    }

    fn names(r: &SotwResponse) -> Vec<String> {
        r.to_message()
            .resources
            .iter()
            .map(|a| {
                String::from_utf8_lossy(&a.value)
                    .split('@')
                    .next()
                    .unwrap_or("")
                    .to_string()
            })
            .collect()
    }

    #[test]
    fn the_first_cluster_request_is_answered_even_when_there_are_no_clusters() {
        let mut s = SotwStream::new();
        let out = s.on_request(&req(CLUSTER, &[], "", ""));
        assert_eq!(out.responses.len(), 1);
        assert!(out.responses[0].resources.is_empty());
        assert!(!out.responses[0].nonce.is_empty());
    }

    #[test]
    fn endpoints_are_sent_only_for_subscribed_names_and_only_when_changed() {
        let mut s = SotwStream::new();
        s.on_resources(node_resources(&[
            (ENDPOINT, "a", "1"),
            (ENDPOINT, "b", "1"),
            (ENDPOINT, "c", "1"),
        ]));
        let out = s.on_request(&req(ENDPOINT, &["a", "b"], "", ""));
        assert_eq!(names(&out.responses[0]), ["a", "b"]);
        let n = out.responses[0].nonce.clone();
        let v = out.responses[0].version_info.clone();
        assert!(s
            .on_request(&req(ENDPOINT, &["a", "b"], &v, &n))
            .responses
            .is_empty());
        // c changes: not subscribed, nothing sent. b changes: only b sent.
        let pushed = s.on_resources(node_resources(&[
            (ENDPOINT, "a", "1"),
            (ENDPOINT, "b", "2"),
            (ENDPOINT, "c", "2"),
        ]));
        assert_eq!(pushed.len(), 1);
        assert_eq!(names(&pushed[0]), ["b"]);
        assert_ne!(pushed[0].version_info, v);
        // subscribing to c sends c only
        let out = s.on_request(&req(
            ENDPOINT,
            &["a", "b", "c"],
            &pushed[0].version_info,
            &pushed[0].nonce,
        ));
        assert_eq!(names(&out.responses[0]), ["c"]);
    }

    #[test]
    fn a_request_with_a_stale_nonce_is_ignored() {
        let mut s = SotwStream::new();
        let first = s.on_request(&req(CLUSTER, &[], "", "")).responses.remove(0);
        let second = s.on_resources(node_resources(&[(CLUSTER, "a", "1")])).remove(0);
        let out = s.on_request(&req(CLUSTER, &[], &first.version_info, &first.nonce));
        assert!(out.stale);
        assert!(out.responses.is_empty() && out.acked.is_none());
        let out = s.on_request(&req(CLUSTER, &[], &second.version_info, &second.nonce));
        assert_eq!(out.acked.as_deref(), Some(second.nonce.as_str()));
    }

    #[test]
    fn a_rejected_cluster_is_never_sent_again_and_the_next_real_change_is() {
        let mut s = SotwStream::new();
        s.on_resources(node_resources(&[(CLUSTER, "a", "1"), (CLUSTER, "b", "1")]));
        let r1 = s.on_request(&req(CLUSTER, &[], "", "")).responses.remove(0);
        s.on_request(&req(CLUSTER, &[], &r1.version_info, &r1.nonce));
        // b becomes invalid
        let r2 = s
            .on_resources(node_resources(&[(CLUSTER, "a", "1"), (CLUSTER, "b", "bad")]))
            .remove(0);
        let out = s.on_request(&nack(CLUSTER, &[], &r1.version_info, &r2.nonce));
        let rej = out.rejection.expect("rejection");
        assert_eq!(rej.resource_names(), ["b"]);
        assert_eq!(rej.message, "bad cluster");
        assert!(out.responses.is_empty(), "no immediate re-send after a NACK");
        // republishing the same content sends nothing
        assert!(s
            .on_resources(node_resources(&[(CLUSTER, "a", "1"), (CLUSTER, "b", "bad")]))
            .is_empty());
        // a real change to a: pushed with b at its last accepted version
        let r3 = s
            .on_resources(node_resources(&[(CLUSTER, "a", "2"), (CLUSTER, "b", "bad")]))
            .remove(0);
        let bodies: Vec<String> = r3
            .to_message()
            .resources
            .iter()
            .map(|a| String::from_utf8_lossy(&a.value).into_owned())
            .collect();
        assert_eq!(bodies, ["a@2", "b@1"]);
        // b fixed: pushed
        s.on_request(&req(CLUSTER, &[], &r3.version_info, &r3.nonce));
        let r4 = s
            .on_resources(node_resources(&[(CLUSTER, "a", "2"), (CLUSTER, "b", "3")]))
            .remove(0);
        let bodies: Vec<String> = r4
            .to_message()
            .resources
            .iter()
            .map(|a| String::from_utf8_lossy(&a.value).into_owned())
            .collect();
        assert_eq!(bodies, ["a@2", "b@3"]);
    }

    #[test]
    fn a_nack_after_a_skipped_stale_ack_blames_only_what_the_proxy_did_not_have() {
        let mut s = SotwStream::new();
        s.on_resources(node_resources(&[(CLUSTER, "a", "1")]));
        let r1 = s.on_request(&req(CLUSTER, &[], "", "")).responses.remove(0);
        let r2 = s
            .on_resources(node_resources(&[(CLUSTER, "a", "1"), (CLUSTER, "b", "bad")]))
            .remove(0);
        assert!(
            s.on_request(&req(CLUSTER, &[], &r1.version_info, &r1.nonce))
                .stale
        );
        let rej = s
            .on_request(&nack(CLUSTER, &[], &r1.version_info, &r2.nonce))
            .rejection
            .expect("nack");
        assert_eq!(rej.resource_names(), ["b"]);
        // the next change keeps a (which the proxy has) and leaves b out
        let r3 = s
            .on_resources(node_resources(&[(CLUSTER, "a", "2"), (CLUSTER, "b", "bad")]))
            .remove(0);
        let bodies: Vec<String> = r3
            .to_message()
            .resources
            .iter()
            .map(|a| String::from_utf8_lossy(&a.value).into_owned())
            .collect();
        assert_eq!(bodies, ["a@2"]);
    }

    #[test]
    fn a_proxy_reconnecting_with_the_current_version_gets_no_response() {
        let mut s = SotwStream::new();
        s.on_resources(node_resources(&[(CLUSTER, "a", "1")]));
        let r1 = s.on_request(&req(CLUSTER, &[], "", "")).responses.remove(0);
        let mut again = SotwStream::new();
        again.on_resources(node_resources(&[(CLUSTER, "a", "1")]));
        assert!(again
            .on_request(&req(CLUSTER, &[], &r1.version_info, ""))
            .responses
            .is_empty());
        assert_eq!(
            again.on_resources(node_resources(&[(CLUSTER, "a", "2")])).len(),
            1
        );
    }

    #[test]
    fn an_ack_repeating_the_names_in_another_order_keeps_the_subscription_and_sends_nothing() {
        let mut s = SotwStream::new();
        s.on_resources(node_resources(&[(ENDPOINT, "a", "1"), (ENDPOINT, "b", "1")]));
        let r = s
            .on_request(&req(ENDPOINT, &["a", "b"], "", ""))
            .responses
            .remove(0);
        let out = s.on_request(&req(ENDPOINT, &["b", "a"], &r.version_info, &r.nonce));
        assert!(out.responses.is_empty());
        // a different set of the same size is a change
        s.on_resources(node_resources(&[
            (ENDPOINT, "a", "1"),
            (ENDPOINT, "b", "1"),
            (ENDPOINT, "c", "1"),
        ]));
        let out = s.on_request(&req(ENDPOINT, &["a", "c"], &r.version_info, &r.nonce));
        assert_eq!(names(&out.responses[0]), ["c"]);
    }

    #[test]
    fn streams_sharing_a_view_and_a_name_set_get_only_the_changed_assignment() {
        let sets = Arc::new(NameSets::default());
        let mut streams: Vec<SotwStream> = (0..3).map(|_| SotwStream::with_name_sets(sets.clone())).collect();
        let v1 = node_resources(&[(ENDPOINT, "a", "1"), (ENDPOINT, "b", "1")]);
        for s in &mut streams {
            s.on_resources(v1.clone());
            let r = s
                .on_request(&req(ENDPOINT, &["a", "b"], "", ""))
                .responses
                .remove(0);
            assert_eq!(names(&r), ["a", "b"]);
            s.on_request(&req(ENDPOINT, &["a", "b"], &r.version_info, &r.nonce));
        }
        let v2 = node_resources(&[(ENDPOINT, "a", "1"), (ENDPOINT, "b", "2")]);
        for s in &mut streams {
            let pushed = s.on_resources(v2.clone());
            assert_eq!(pushed.len(), 1);
            assert_eq!(names(&pushed[0]), ["b"]);
        }
    }

    #[test]
    fn nonces_are_unique_across_types_on_a_stream() {
        let mut s = SotwStream::new();
        let a = s.on_request(&req(CLUSTER, &[], "", "")).responses.remove(0);
        let b = s
            .on_request(&req(crate::LISTENER, &[], "", ""))
            .responses
            .remove(0);
        assert_ne!(a.nonce, b.nonce);
    }

    fn nack_saying(type_url: &str, version: &str, nonce: &str, message: &str) -> SotwRequest {
        let names: &[&str] = if type_url == ENDPOINT {
            &["a", "b", "c", "d"]
        } else {
            &[]
        };
        let mut r = request(type_url, names, version, nonce);
        r.error_detail = Some(Status {
            code: 3,
            message: message.into(),
            details: vec![],
        });
        r.into()
    }

    fn quarantined(s: &SotwStream, type_url: &str) -> usize {
        s.quarantined()
            .find(|(t, _)| *t == type_url)
            .map_or(0, |(_, n)| n)
    }

    #[test]
    fn a_fresh_proxy_rejecting_one_cluster_gets_every_other_one_and_the_culprit_is_found() {
        let mut s = SotwStream::new();
        s.on_resources(node_resources(&[
            (CLUSTER, "a", "1"),
            (CLUSTER, "b", "1"),
            (CLUSTER, "bad", "1"),
            (CLUSTER, "c", "1"),
        ]));
        let r1 = s.on_request(&req(CLUSTER, &[], "", "")).responses.remove(0);
        assert_eq!(names(&r1), ["a", "b", "bad", "c"]);
        let message = "Proto constraint validation failed: name: \"bad\"";
        let mut out = s.on_request(&nack_saying(CLUSTER, "", &r1.nonce, message));
        let rej = out.rejection.expect("rejection");
        assert!(matches!(rej.verdict, crate::quarantine::Verdict::Narrowing(_)));
        assert_eq!(rej.resource_names(), ["a", "b", "bad", "c"]);
        // Everything the message does not name goes out at once.
        let r2 = out.responses.remove(0);
        assert_eq!(names(&r2), ["a", "b", "c"]);
        let r3 = s
            .on_request(&req(CLUSTER, &[], &r2.version_info, &r2.nonce))
            .responses
            .remove(0);
        assert_eq!(names(&r3), ["a", "b", "bad", "c"], "the named one, on its own");
        let out = s.on_request(&nack_saying(CLUSTER, &r2.version_info, &r3.nonce, message));
        let rej = out.rejection.expect("rejection");
        assert_eq!(
            rej.verdict,
            crate::quarantine::Verdict::Quarantined(vec![crate::testing::res(CLUSTER, "bad", "1")])
        );
        assert!(out.responses.is_empty(), "the proxy already holds the rest");
        assert_eq!(quarantined(&s, CLUSTER), 1);
        // Unrelated changes keep flowing without it; its fix is sent.
        let r4 = s
            .on_resources(node_resources(&[
                (CLUSTER, "a", "2"),
                (CLUSTER, "b", "1"),
                (CLUSTER, "bad", "1"),
                (CLUSTER, "c", "1"),
            ]))
            .remove(0);
        assert_eq!(names(&r4), ["a", "b", "c"]);
        s.on_request(&req(CLUSTER, &[], &r4.version_info, &r4.nonce));
        let r5 = s
            .on_resources(node_resources(&[
                (CLUSTER, "a", "2"),
                (CLUSTER, "b", "1"),
                (CLUSTER, "bad", "2"),
                (CLUSTER, "c", "1"),
            ]))
            .remove(0);
        assert_eq!(names(&r5), ["a", "b", "bad", "c"]);
        assert_eq!(quarantined(&s, CLUSTER), 0);
    }

    #[test]
    fn a_nack_with_an_older_nonce_is_reported_and_acted_on() {
        let mut s = SotwStream::new();
        s.on_resources(node_resources(&[(CLUSTER, "a", "1")]));
        let r1 = s.on_request(&req(CLUSTER, &[], "", "")).responses.remove(0);
        s.on_request(&req(CLUSTER, &[], &r1.version_info, &r1.nonce));
        let r2 = s
            .on_resources(node_resources(&[(CLUSTER, "a", "1"), (CLUSTER, "bad", "1")]))
            .remove(0);
        // Newer config is already on its way when the proxy answers r2.
        let r3 = s
            .on_resources(node_resources(&[
                (CLUSTER, "a", "1"),
                (CLUSTER, "bad", "1"),
                (CLUSTER, "c", "1"),
            ]))
            .remove(0);
        let mut out = s.on_request(&nack(CLUSTER, &[], &r1.version_info, &r2.nonce));
        assert!(out.stale);
        let rej = out.rejection.expect("a stale NACK is still a rejection");
        assert!(rej.stale);
        assert_eq!(rej.resource_names(), ["bad"]);
        assert!(matches!(rej.verdict, crate::quarantine::Verdict::Quarantined(_)));
        // r3 carries the bad cluster too: a corrected response goes out without waiting.
        let r4 = out.responses.remove(0);
        assert_eq!(names(&r4), ["a", "c"]);
        // The proxy then rejects r3 (stale now): explained by the quarantined cluster, c is not
        // blamed and nothing more is sent.
        let out = s.on_request(&nack(CLUSTER, &[], &r1.version_info, &r3.nonce));
        let rej = out.rejection.expect("rejection");
        assert!(matches!(rej.verdict, crate::quarantine::Verdict::Explained(_)));
        assert_eq!(rej.resource_names(), ["bad"]);
        assert!(out.responses.is_empty());
        let out = s.on_request(&req(CLUSTER, &[], &r4.version_info, &r4.nonce));
        assert_eq!(out.acked.as_deref(), Some(r4.nonce.as_str()));
        assert!(out.responses.is_empty());
        assert_eq!(quarantined(&s, CLUSTER), 1);
    }

    #[test]
    fn a_rejected_endpoint_assignment_is_narrowed_down_and_the_others_are_sent() {
        let mut s = SotwStream::new();
        s.on_resources(node_resources(&[
            (ENDPOINT, "a", "1"),
            (ENDPOINT, "b", "1"),
            (ENDPOINT, "c", "1"),
            (ENDPOINT, "d", "1"),
        ]));
        let subscribed = ["a", "b", "c", "d"];
        let r1 = s
            .on_request(&req(ENDPOINT, &subscribed, "", ""))
            .responses
            .remove(0);
        // An opaque message: halves.
        let mut out = s.on_request(&nack_saying(ENDPOINT, "", &r1.nonce, "invalid"));
        let r2 = out.responses.remove(0);
        assert_eq!(names(&r2), ["a", "b"]);
        let mut out = s.on_request(&req(ENDPOINT, &subscribed, &r2.version_info, &r2.nonce));
        let r3 = out.responses.remove(0);
        assert_eq!(names(&r3), ["c", "d"]);
        let mut out = s.on_request(&nack_saying(ENDPOINT, &r2.version_info, &r3.nonce, "invalid"));
        let r4 = out.responses.remove(0);
        assert_eq!(names(&r4), ["c"]);
        let mut out = s.on_request(&req(ENDPOINT, &subscribed, &r4.version_info, &r4.nonce));
        let r5 = out.responses.remove(0);
        assert_eq!(names(&r5), ["d"]);
        let out = s.on_request(&nack_saying(ENDPOINT, &r4.version_info, &r5.nonce, "invalid"));
        assert_eq!(out.rejection.expect("rejection").resource_names(), ["d"]);
        assert!(out.responses.is_empty());
    }

    #[test]
    fn an_updated_cluster_is_followed_by_its_unchanged_endpoints() {
        let mut s = SotwStream::new();
        s.on_resources(node_resources(&[
            (CLUSTER, "a", "1"),
            (CLUSTER, "b", "1"),
            (ENDPOINT, "a", "1"),
            (ENDPOINT, "b", "1"),
        ]));
        let cds = s.on_request(&req(CLUSTER, &[], "", "")).responses.remove(0);
        s.on_request(&req(CLUSTER, &[], &cds.version_info, &cds.nonce));
        let eds = s
            .on_request(&req(ENDPOINT, &["a", "b"], "", ""))
            .responses
            .remove(0);
        s.on_request(&req(ENDPOINT, &["a", "b"], &eds.version_info, &eds.nonce));
        let pushed = s.on_resources(node_resources(&[
            (CLUSTER, "a", "2"),
            (CLUSTER, "b", "1"),
            (ENDPOINT, "a", "1"),
            (ENDPOINT, "b", "1"),
        ]));
        assert_eq!(pushed.len(), 2);
        assert_eq!(pushed[1].type_url, ENDPOINT);
        assert_eq!(names(&pushed[1]), ["a"]);
    }
}
