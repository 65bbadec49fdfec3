//! Delta (incremental) ADS: the per-stream bookkeeping as a pure state machine (no I/O).
//!
//! Per type the stream tracks which names the proxy subscribed to (or the wildcard) and which
//! version of each resource the proxy holds (seeded from `initial_resource_versions`). A response
//! carries only resources whose version differs from the proxy's, and `removed_resources` for
//! those it holds that no longer exist (or that it asked for by name and that do not exist).
//!
//! Subscription changes are applied from every request, whatever its nonce: unlike SotW they are
//! incremental and would be lost otherwise. A nonce that is not one of the responses still awaiting
//! an answer is stale and its ACK/NACK part is ignored. After a NACK the proxy is taken to still
//! hold its previous version of each resource of the rejected response, and the rejected versions
//! are not sent again.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource as WireResource,
};
use traffic_translate::snapshot::{Resource, Resources};

use crate::rejection::Rejection;
use crate::{is_full_state, unique_origins, View, ORDER};

/// A response awaiting its ACK/NACK.
#[derive(Debug)]
struct InFlight {
    nonce: String,
    /// Updated resources with the version the proxy had before (None: it had none).
    updated: Vec<(Arc<Resource>, Option<String>)>,
}

#[derive(Debug, Default)]
struct TypeState {
    wildcard: bool,
    names: BTreeSet<String>,
    /// name -> version the proxy holds (assuming it accepts what was sent).
    client: BTreeMap<String, String>,
    /// name -> version the proxy rejected.
    rejected: BTreeMap<String, String>,
    in_flight: VecDeque<InFlight>,
    /// Names subscribed explicitly that do not exist and were already reported as removed.
    announced_missing: BTreeSet<String>,
}

/// At most this many unanswered responses are remembered per type; older ones count as answered.
const MAX_IN_FLIGHT: usize = 64;

/// What a request did, for logging and metrics.
#[derive(Debug, Default, PartialEq)]
pub struct DeltaOutcome {
    pub responses: Vec<DeltaDiscoveryResponse>,
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
}

impl DeltaStream {
    pub fn new() -> Self {
        DeltaStream::default()
    }

    pub fn resources(&self) -> &View {
        &self.resources
    }

    /// Handles one request from the proxy.
    pub fn on_request(&mut self, req: &DeltaDiscoveryRequest) -> DeltaOutcome {
        let type_url = req.type_url.as_str();
        let mut out = DeltaOutcome::default();
        let first = !self.types.contains_key(type_url);
        let ts = self.types.entry(type_url.to_string()).or_default();
        if first {
            ts.client = req
                .initial_resource_versions
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            // Legacy wildcard: a first request naming nothing, for listeners and clusters.
            ts.wildcard = req.resource_names_subscribe.is_empty() && is_full_state(type_url);
        }
        if !req.response_nonce.is_empty() {
            match ts.in_flight.iter().position(|f| f.nonce == req.response_nonce) {
                None => out.stale = true,
                Some(pos) => {
                    // Older unanswered responses are implicitly answered.
                    let answered = ts.in_flight.drain(..=pos).next_back();
                    if let Some(answered) = answered {
                        match &req.error_detail {
                            None => out.acked = Some(req.response_nonce.clone()),
                            Some(status) => {
                                for (res, prev) in &answered.updated {
                                    if ts.client.get(&res.name) == Some(&res.version) {
                                        match prev {
                                            Some(p) => ts.client.insert(res.name.clone(), p.clone()),
                                            None => ts.client.remove(&res.name),
                                        };
                                    }
                                    ts.rejected.insert(res.name.clone(), res.version.clone());
                                }
                                out.rejection = Some(Rejection {
                                    type_url: type_url.to_string(),
                                    resources: answered.updated.iter().map(|(r, _)| r.name.clone()).collect(),
                                    origins: unique_origins(answered.updated.iter().map(|(r, _)| r)),
                                    message: status.message.clone(),
                                    kept_version: String::new(),
                                });
                            }
                        }
                    }
                }
            }
        }
        let mut changed = first;
        for name in &req.resource_names_subscribe {
            changed = true;
            if name == "*" {
                ts.wildcard = true;
            } else {
                ts.names.insert(name.clone());
            }
        }
        for name in &req.resource_names_unsubscribe {
            changed = true;
            if name == "*" {
                ts.wildcard = false;
                // The proxy drops what it only had through the wildcard.
                let names = &ts.names;
                ts.client.retain(|n, _| names.contains(n));
            } else {
                ts.names.remove(name);
                ts.announced_missing.remove(name);
                if !ts.wildcard {
                    ts.client.remove(name);
                }
            }
        }
        if changed {
            out.responses.extend(self.push(type_url, first));
        }
        out
    }

    /// Takes a new set of resources (with its generation, reported as `system_version_info`) and
    /// returns the responses it causes, in make-before-break order.
    pub fn on_resources(&mut self, resources: Arc<View>, generation: u64) -> Vec<DeltaDiscoveryResponse> {
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

    fn push(&mut self, type_url: &str, initial: bool) -> Option<DeltaDiscoveryResponse> {
        let all: Arc<Resources> = self
            .resources
            .get(type_url)
            .map(|tv| tv.resources.clone())
            .unwrap_or_default();
        let all = &*all;
        let ts = self.types.get_mut(type_url)?;
        let mut updated: Vec<(Arc<Resource>, Option<String>)> = Vec::new();
        let mut moved_on: Vec<String> = Vec::new();
        {
            let state: &TypeState = ts;
            let mut consider = |name: &String, res: &Arc<Resource>| {
                match state.rejected.get(name) {
                    Some(bad) if *bad == res.version => return,
                    Some(_) => moved_on.push(name.clone()),
                    None => {}
                }
                let had = state.client.get(name);
                if had != Some(&res.version) {
                    updated.push((res.clone(), had.cloned()));
                }
            };
            if state.wildcard {
                for (name, res) in all {
                    consider(name, res);
                }
            } else {
                for name in &state.names {
                    if let Some(res) = all.get(name) {
                        consider(name, res);
                    }
                }
            }
        }
        for name in moved_on {
            ts.rejected.remove(&name);
        }
        let wildcard = ts.wildcard;
        let mut removed: Vec<String> = ts
            .client
            .keys()
            .filter(|n| !all.contains_key(*n) || !(wildcard || ts.names.contains(*n)))
            .cloned()
            .collect();
        for name in &ts.names {
            if !all.contains_key(name)
                && !ts.client.contains_key(name)
                && ts.announced_missing.insert(name.clone())
            {
                removed.push(name.clone());
            }
        }
        for name in &removed {
            ts.client.remove(name);
        }
        for (res, _) in &updated {
            ts.client.insert(res.name.clone(), res.version.clone());
            ts.announced_missing.remove(&res.name);
        }
        if updated.is_empty() && removed.is_empty() && !(initial && wildcard) {
            return None;
        }
        self.nonce += 1;
        let nonce = self.nonce.to_string();
        let response = DeltaDiscoveryResponse {
            system_version_info: self.system_version.clone(),
            resources: updated
                .iter()
                .map(|(r, _)| WireResource {
                    name: r.name.clone(),
                    version: r.version.clone(),
                    resource: Some(r.body.clone()),
                    ..Default::default()
                })
                .collect(),
            type_url: type_url.to_string(),
            removed_resources: removed,
            nonce: nonce.clone(),
            ..Default::default()
        };
        ts.in_flight.push_back(InFlight { nonce, updated });
        while ts.in_flight.len() > MAX_IN_FLIGHT {
            ts.in_flight.pop_front();
        }
        Some(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::node_resources;
    use envoy_types::pb::google::rpc::Status;
    use traffic_translate::snapshot::{CLUSTER, ENDPOINT};

    fn req(type_url: &str, sub: &[&str], unsub: &[&str], nonce: &str) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            type_url: type_url.to_string(),
            resource_names_subscribe: sub.iter().map(|s| s.to_string()).collect(),
            resource_names_unsubscribe: unsub.iter().map(|s| s.to_string()).collect(),
            response_nonce: nonce.to_string(),
            ..Default::default()
        }
    }

    fn updated(r: &DeltaDiscoveryResponse) -> Vec<(String, String)> {
        r.resources
            .iter()
            .map(|w| (w.name.clone(), w.version.clone()))
            .collect()
    }

    fn pair(n: &str, v: &str) -> (String, String) {
        (n.to_string(), v.to_string())
    }

    #[test]
    fn only_changed_and_removed_clusters_are_sent() {
        let mut s = DeltaStream::new();
        s.on_resources(node_resources(&[(CLUSTER, "a", "1"), (CLUSTER, "b", "1")]), 1);
        let r1 = s.on_request(&req(CLUSTER, &[], &[], "")).responses.remove(0);
        assert_eq!(updated(&r1), [pair("a", "1"), pair("b", "1")]);
        s.on_request(&req(CLUSTER, &[], &[], &r1.nonce));
        let r2 = s
            .on_resources(node_resources(&[(CLUSTER, "a", "2"), (CLUSTER, "c", "1")]), 2)
            .remove(0);
        assert_eq!(updated(&r2), [pair("a", "2"), pair("c", "1")]);
        assert_eq!(r2.removed_resources, ["b"]);
        assert_eq!(r2.system_version_info, "2");
        assert!(s
            .on_resources(node_resources(&[(CLUSTER, "a", "2"), (CLUSTER, "c", "1")]), 3)
            .is_empty());
    }

    #[test]
    fn initial_resource_versions_are_honoured() {
        let mut s = DeltaStream::new();
        s.on_resources(node_resources(&[(CLUSTER, "a", "1"), (CLUSTER, "b", "2")]), 1);
        let mut r = req(CLUSTER, &[], &[], "");
        r.initial_resource_versions.insert("a".into(), "1".into());
        r.initial_resource_versions.insert("b".into(), "1".into());
        r.initial_resource_versions.insert("gone".into(), "1".into());
        let resp = s.on_request(&r).responses.remove(0);
        assert_eq!(updated(&resp), [pair("b", "2")]);
        assert_eq!(resp.removed_resources, ["gone"]);
    }

    #[test]
    fn named_subscriptions_get_their_resources_and_missing_names_are_reported_once() {
        let mut s = DeltaStream::new();
        s.on_resources(node_resources(&[(ENDPOINT, "a", "1"), (ENDPOINT, "b", "1")]), 1);
        let r = s
            .on_request(&req(ENDPOINT, &["a", "nope"], &[], ""))
            .responses
            .remove(0);
        assert_eq!(updated(&r), [pair("a", "1")]);
        assert_eq!(r.removed_resources, ["nope"]);
        assert!(s
            .on_resources(node_resources(&[(ENDPOINT, "a", "1"), (ENDPOINT, "b", "2")]), 2)
            .is_empty());
        let r = s
            .on_request(&req(ENDPOINT, &["b"], &["a"], &r.nonce))
            .responses
            .remove(0);
        assert_eq!(updated(&r), [pair("b", "2")]);
        assert!(r.removed_resources.is_empty());
        // a changes after being unsubscribed: nothing
        assert!(s
            .on_resources(node_resources(&[(ENDPOINT, "a", "9"), (ENDPOINT, "b", "2")]), 3)
            .is_empty());
    }

    #[test]
    fn a_rejected_version_is_not_resent_and_the_proxy_keeps_its_previous_one() {
        let mut s = DeltaStream::new();
        s.on_resources(node_resources(&[(CLUSTER, "a", "1")]), 1);
        let r1 = s.on_request(&req(CLUSTER, &[], &[], "")).responses.remove(0);
        s.on_request(&req(CLUSTER, &[], &[], &r1.nonce));
        let r2 = s
            .on_resources(node_resources(&[(CLUSTER, "a", "bad")]), 2)
            .remove(0);
        let mut n = req(CLUSTER, &[], &[], &r2.nonce);
        n.error_detail = Some(Status {
            code: 3,
            message: "no".into(),
            details: vec![],
        });
        let out = s.on_request(&n);
        assert_eq!(out.rejection.expect("rejection").resources, ["a"]);
        assert!(out.responses.is_empty());
        assert!(s
            .on_resources(node_resources(&[(CLUSTER, "a", "bad")]), 3)
            .is_empty());
        // back to the accepted version: the proxy already has it, nothing to send
        assert!(s
            .on_resources(node_resources(&[(CLUSTER, "a", "1")]), 4)
            .is_empty());
        let r = s
            .on_resources(node_resources(&[(CLUSTER, "a", "3")]), 5)
            .remove(0);
        assert_eq!(updated(&r), [pair("a", "3")]);
    }

    #[test]
    fn an_ack_for_an_unknown_nonce_is_stale_but_its_subscriptions_apply() {
        let mut s = DeltaStream::new();
        s.on_resources(node_resources(&[(ENDPOINT, "a", "1")]), 1);
        s.on_request(&req(ENDPOINT, &[], &[], ""));
        let out = s.on_request(&req(ENDPOINT, &["a"], &[], "42"));
        assert!(out.stale);
        assert_eq!(updated(&out.responses[0]), [pair("a", "1")]);
    }
}
