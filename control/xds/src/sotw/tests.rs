//! The SotW stream state machine driven by hand-made requests (no gRPC).

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

/// `request` as the server receives it: encoded, then decoded with the stream's known name lists.
fn wire(s: &SotwStream, r: DiscoveryRequest) -> SotwRequest {
    use prost::Message;
    crate::request::decode_sotw_with(bytes::Bytes::from(r.encode_to_vec()), s.known_names()).expect("decode")
}

#[test]
fn acks_repeating_the_subscribed_names_are_recognised_at_once_and_a_changed_list_still_counts() {
    let mut s = SotwStream::new();
    s.on_resources(node_resources(&[
        (ENDPOINT, "a", "1"),
        (ENDPOINT, "b", "1"),
        (ENDPOINT, "c", "1"),
    ]));
    let first = wire(&s, request(ENDPOINT, &["a", "b"], "", ""));
    assert!(first.names.encoded().is_none());
    let r = s.on_request(&first).responses.remove(0);
    assert_eq!(names(&r), ["a", "b"]);
    // The ACK repeats the list: recognised as the subscription's, nothing to send.
    let ack = wire(&s, request(ENDPOINT, &["a", "b"], &r.version_info, &r.nonce));
    assert!(ack.names.encoded().is_some());
    assert_eq!(ack.names.iter().collect::<Vec<_>>(), ["a", "b"]);
    assert!(s.on_request(&ack).responses.is_empty());
    // One more name after the known ones: a new subscription.
    let more = wire(&s, request(ENDPOINT, &["a", "b", "c"], &r.version_info, &r.nonce));
    assert!(more.names.encoded().is_none());
    let out = s.on_request(&more);
    assert_eq!(names(&out.responses[0]), ["c"]);
    // Back to the first list: a change again (the known list is now the three names).
    let r = &out.responses[0];
    let fewer = wire(&s, request(ENDPOINT, &["a", "b"], &r.version_info, &r.nonce));
    assert!(fewer.names.encoded().is_none());
    s.on_request(&fewer);
    let pushed = s.on_resources(node_resources(&[
        (ENDPOINT, "a", "1"),
        (ENDPOINT, "b", "1"),
        (ENDPOINT, "c", "3"),
    ]));
    assert!(pushed.is_empty(), "c is no longer subscribed");
}

#[test]
fn streams_repeating_the_same_names_share_one_encoded_list() {
    let sets = Arc::new(NameSets::default());
    let mut a = SotwStream::with_name_sets(sets.clone());
    let mut b = SotwStream::with_name_sets(sets);
    for s in [&mut a, &mut b] {
        s.on_resources(node_resources(&[(ENDPOINT, "x", "1")]));
        let first = wire(s, request(ENDPOINT, &["x"], "", ""));
        s.on_request(&first);
    }
    assert!(Arc::ptr_eq(&a.known_names()[0], &b.known_names()[0]));
}
