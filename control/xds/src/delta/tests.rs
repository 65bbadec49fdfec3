//! The delta stream state machine driven by hand-made requests (no gRPC).

use super::*;
use crate::testing::node_resources;
use envoy_types::pb::google::rpc::Status;

fn req(type_url: &str, sub: &[&str], unsub: &[&str], nonce: &str) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: type_url.to_string(),
        resource_names_subscribe: sub.iter().map(|s| s.to_string()).collect(),
        resource_names_unsubscribe: unsub.iter().map(|s| s.to_string()).collect(),
        response_nonce: nonce.to_string(),
        ..Default::default()
    }
}

/// A NACK of the response with `nonce`.
fn nack(type_url: &str, nonce: &str) -> DeltaDiscoveryRequest {
    let mut n = req(type_url, &[], &[], nonce);
    n.error_detail = Some(Status {
        code: 3,
        message: "no".into(),
        details: vec![],
    });
    n
}

fn updated(r: &DeltaResponse) -> Vec<(String, String)> {
    r.resources
        .resources
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
    s.on_request(&req(CLUSTER, &[], &[], &resp.nonce));
    // in step with the view from now on
    let next = s
        .on_resources(node_resources(&[(CLUSTER, "a", "2"), (CLUSTER, "b", "2")]), 2)
        .remove(0);
    assert_eq!(updated(&next), [pair("a", "2")]);
    assert!(next.removed_resources.is_empty());
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
    // b disappears: removed once; it comes back: sent again
    let r = s
        .on_resources(node_resources(&[(ENDPOINT, "a", "9")]), 4)
        .remove(0);
    assert!(updated(&r).is_empty());
    assert_eq!(r.removed_resources, ["b"]);
    assert!(s
        .on_resources(node_resources(&[(ENDPOINT, "a", "8")]), 5)
        .is_empty());
    let r = s
        .on_resources(node_resources(&[(ENDPOINT, "a", "8"), (ENDPOINT, "b", "3")]), 6)
        .remove(0);
    assert_eq!(updated(&r), [pair("b", "3")]);
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
    let out = s.on_request(&nack(CLUSTER, &r2.nonce));
    assert_eq!(out.rejection.expect("rejection").resource_names(), ["a"]);
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
fn a_nack_keeps_other_resources_in_step_and_the_bad_one_out() {
    let mut s = DeltaStream::new();
    s.on_resources(node_resources(&[(CLUSTER, "a", "1"), (CLUSTER, "b", "1")]), 1);
    let r1 = s.on_request(&req(CLUSTER, &[], &[], "")).responses.remove(0);
    s.on_request(&req(CLUSTER, &[], &[], &r1.nonce));
    let r2 = s
        .on_resources(node_resources(&[(CLUSTER, "a", "bad"), (CLUSTER, "b", "1")]), 2)
        .remove(0);
    s.on_request(&nack(CLUSTER, &r2.nonce));
    // b changes: only b is sent, a stays at the accepted version on the proxy
    let r3 = s
        .on_resources(node_resources(&[(CLUSTER, "a", "bad"), (CLUSTER, "b", "2")]), 3)
        .remove(0);
    assert_eq!(updated(&r3), [pair("b", "2")]);
    s.on_request(&req(CLUSTER, &[], &[], &r3.nonce));
    // a fixed: sent
    let r4 = s
        .on_resources(node_resources(&[(CLUSTER, "a", "3"), (CLUSTER, "b", "2")]), 4)
        .remove(0);
    assert_eq!(updated(&r4), [pair("a", "3")]);
}

#[test]
fn streams_in_step_share_the_encoded_difference() {
    let sets = Arc::new(NameSets::default());
    let v1 = node_resources(&[(ENDPOINT, "a", "1"), (ENDPOINT, "b", "1")]);
    let v2 = node_resources(&[(ENDPOINT, "a", "1"), (ENDPOINT, "b", "2")]);
    let mut pushed = Vec::new();
    for _ in 0..2 {
        let mut s = DeltaStream::with_name_sets(sets.clone());
        s.on_resources(v1.clone(), 1);
        let r = s
            .on_request(&req(ENDPOINT, &["a", "b"], &[], ""))
            .responses
            .remove(0);
        s.on_request(&req(ENDPOINT, &[], &[], &r.nonce));
        pushed.push(s.on_resources(v2.clone(), 2).remove(0));
    }
    assert_eq!(updated(&pushed[0]), [pair("b", "2")]);
    assert!(Arc::ptr_eq(&pushed[0].resources, &pushed[1].resources));
}

#[test]
fn an_encoded_delta_response_decodes_to_its_message() {
    use prost::Message;
    let mut s = DeltaStream::new();
    s.on_resources(node_resources(&[(CLUSTER, "a", "1"), (CLUSTER, "b", "1")]), 1);
    let mut r = req(CLUSTER, &[], &[], "");
    r.initial_resource_versions.insert("gone".into(), "1".into());
    let resp = s.on_request(&r).responses.remove(0);
    let encoded = resp.encode();
    let f: Vec<u8> = [&encoded.head[..], &encoded.body[..]].concat();
    assert_eq!(u32::from_be_bytes([f[1], f[2], f[3], f[4]]) as usize, f.len() - 5);
    let decoded = DeltaDiscoveryResponse::decode(&f[5..]).expect("decode");
    assert_eq!(decoded, resp.to_message());
    assert_eq!(decoded.removed_resources, ["gone"]);
    assert_eq!(decoded.resources.len(), 2);
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

fn nack_saying(type_url: &str, nonce: &str, message: &str) -> DeltaDiscoveryRequest {
    let mut n = nack(type_url, nonce);
    if let Some(e) = n.error_detail.as_mut() {
        e.message = message.into();
    }
    n
}

#[test]
fn a_rejected_delta_response_is_narrowed_down_to_the_resource_the_proxy_cannot_take() {
    let mut s = DeltaStream::new();
    s.on_resources(
        node_resources(&[
            (CLUSTER, "a", "1"),
            (CLUSTER, "b", "1"),
            (CLUSTER, "bad", "1"),
            (CLUSTER, "c", "1"),
        ]),
        1,
    );
    let r1 = s.on_request(&req(CLUSTER, &[], &[], "")).responses.remove(0);
    assert_eq!(updated(&r1).len(), 4);
    let message = "Error adding/updating cluster(s) bad: invalid";
    let mut out = s.on_request(&nack_saying(CLUSTER, &r1.nonce, message));
    assert!(matches!(
        out.rejection.expect("nack").verdict,
        Verdict::Narrowing(_)
    ));
    let r2 = out.responses.remove(0);
    assert_eq!(updated(&r2), [pair("a", "1"), pair("b", "1"), pair("c", "1")]);
    let mut out = s.on_request(&req(CLUSTER, &[], &[], &r2.nonce));
    let r3 = out.responses.remove(0);
    assert_eq!(updated(&r3), [pair("bad", "1")], "only what the proxy lacks");
    let out = s.on_request(&nack_saying(CLUSTER, &r3.nonce, message));
    assert_eq!(out.rejection.expect("nack").resource_names(), ["bad"]);
    assert!(out.responses.is_empty());
    assert_eq!(s.quarantined().map(|(_, n)| n).sum::<usize>(), 1);
    // Others keep changing without it; when it changes it is sent again.
    let r4 = s
        .on_resources(
            node_resources(&[
                (CLUSTER, "a", "2"),
                (CLUSTER, "b", "1"),
                (CLUSTER, "bad", "1"),
                (CLUSTER, "c", "1"),
            ]),
            2,
        )
        .remove(0);
    assert_eq!(updated(&r4), [pair("a", "2")]);
    s.on_request(&req(CLUSTER, &[], &[], &r4.nonce));
    let r5 = s
        .on_resources(
            node_resources(&[
                (CLUSTER, "a", "2"),
                (CLUSTER, "b", "1"),
                (CLUSTER, "bad", "2"),
                (CLUSTER, "c", "1"),
            ]),
            3,
        )
        .remove(0);
    assert_eq!(updated(&r5), [pair("bad", "2")]);
}

#[test]
fn a_delta_nack_of_an_older_response_is_reported_as_stale_and_its_resources_kept_out() {
    let mut s = DeltaStream::new();
    s.on_resources(node_resources(&[(CLUSTER, "a", "1")]), 1);
    let r1 = s.on_request(&req(CLUSTER, &[], &[], "")).responses.remove(0);
    s.on_request(&req(CLUSTER, &[], &[], &r1.nonce));
    let r2 = s
        .on_resources(node_resources(&[(CLUSTER, "a", "1"), (CLUSTER, "bad", "1")]), 2)
        .remove(0);
    let r3 = s
        .on_resources(node_resources(&[(CLUSTER, "a", "2"), (CLUSTER, "bad", "1")]), 3)
        .remove(0);
    assert_eq!(updated(&r3), [pair("a", "2")]);
    let out = s.on_request(&nack(CLUSTER, &r2.nonce));
    let rej = out.rejection.expect("nack");
    assert!(rej.stale, "r3 was already sent");
    assert_eq!(rej.resource_names(), ["bad"]);
    assert!(out.responses.is_empty(), "r3 does not carry it");
    s.on_request(&req(CLUSTER, &[], &[], &r3.nonce));
    assert!(s
        .on_resources(node_resources(&[(CLUSTER, "a", "2"), (CLUSTER, "bad", "1")]), 4)
        .is_empty());
    // A NACK of a nonce the stream no longer knows is still counted.
    let out = s.on_request(&nack(CLUSTER, "999"));
    assert!(out.stale);
    assert_eq!(out.rejection.expect("counted").verdict, Verdict::Unexplained);
}

#[test]
fn an_updated_cluster_is_followed_by_its_unchanged_endpoints_in_delta_too() {
    let mut s = DeltaStream::new();
    let v1 = node_resources(&[(CLUSTER, "a", "1"), (ENDPOINT, "a", "1"), (ENDPOINT, "b", "1")]);
    s.on_resources(v1, 1);
    let cds = s.on_request(&req(CLUSTER, &[], &[], "")).responses.remove(0);
    s.on_request(&req(CLUSTER, &[], &[], &cds.nonce));
    let eds = s
        .on_request(&req(ENDPOINT, &["a", "b"], &[], ""))
        .responses
        .remove(0);
    s.on_request(&req(ENDPOINT, &[], &[], &eds.nonce));
    let pushed = s.on_resources(
        node_resources(&[(CLUSTER, "a", "2"), (ENDPOINT, "a", "1"), (ENDPOINT, "b", "1")]),
        2,
    );
    assert_eq!(pushed.len(), 2);
    assert_eq!(updated(&pushed[1]), [pair("a", "1")]);
    assert!(pushed[1].removed_resources.is_empty());
}

#[test]
fn a_suspect_no_longer_subscribed_does_not_hold_back_the_others() {
    let mut s = DeltaStream::new();
    s.on_resources(
        node_resources(&[
            (ENDPOINT, "a", "1"),
            (ENDPOINT, "b", "1"),
            (ENDPOINT, "c", "1"),
            (ENDPOINT, "d", "1"),
        ]),
        1,
    );
    let r1 = s
        .on_request(&req(ENDPOINT, &["a", "b", "c", "d"], &[], ""))
        .responses
        .remove(0);
    let mut out = s.on_request(&nack_saying(ENDPOINT, &r1.nonce, "invalid"));
    assert_eq!(
        updated(&out.responses.remove(0)),
        [pair("a", "1"), pair("b", "1")]
    );
    // Before answering that probe the proxy drops a and b: c and d are not held back for ever.
    let out = s.on_request(&req(ENDPOINT, &[], &["a", "b"], ""));
    assert_eq!(updated(&out.responses[0]), [pair("c", "1"), pair("d", "1")]);
}
