//! The real TokenReview against a real API server (the e2e kit's Kubernetes 1.20): tokens from
//! the TokenRequest API, bound to a pod, for audience `traffic-control`, reviewed by
//! `KubeTokenReviewer` and judged by the production `Authenticator`.
//!
//! Needs a cluster: runs when `TRAFFIC_KUBE_TESTS=1` (with `KUBECONFIG` pointing at it, e.g.
//! `. /run/traffic-e2e/env.sh`); skipped otherwise. Creates and deletes its own namespace.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use kube::api::{DeleteParams, PostParams};
use kube::Api;
use traffic_xds::{Admit, Credentials};
use traffic_xds_auth::{
    Authenticator, KubeTokenReviewer, PodFacts, Policy, ReviewError, StaticPods, TokenReviewer, AUDIENCE,
};

fn enabled() -> bool {
    if std::env::var("TRAFFIC_KUBE_TESTS").as_deref() == Ok("1") {
        return true;
    }
    eprintln!("SKIPPED: set TRAFFIC_KUBE_TESTS=1 and KUBECONFIG to run against a cluster");
    false
}

async fn token(client: &kube::Client, ns: &str, sa: &str, audience: &str, pod: Option<&Pod>) -> String {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![audience.to_string()],
            expiration_seconds: Some(600),
            bound_object_ref: pod.map(|p| BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: p.metadata.name.clone(),
                uid: p.metadata.uid.clone(),
            }),
        },
        ..TokenRequest::default()
    };
    api.create_token_request(sa, &PostParams::default(), &request)
        .await
        .expect("TokenRequest")
        .status
        .expect("status")
        .token
}

async fn run(client: kube::Client, ns: String) {
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    let mut sa = ServiceAccount::default();
    sa.metadata.name = Some("web".into());
    sas.create(&PostParams::default(), &sa)
        .await
        .expect("service account");
    // A pod that is never scheduled (unknown node): a TokenRequest only needs the object.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "a"},
        // No token volume: the 1.20 admission plugin would otherwise wait for the account's
        // legacy token Secret.
        "spec": {"nodeName": "nowhere", "serviceAccountName": "web", "automountServiceAccountToken": false,
                 "containers": [{"name": "c", "image": "pause"}]},
    }))
    .expect("pod");
    let pod = pods.create(&PostParams::default(), &pod).await.expect("pod");
    let uid = pod.metadata.uid.clone().expect("uid");

    let reviewer = KubeTokenReviewer::new(client.clone());
    let bound = token(&client, &ns, "web", AUDIENCE, Some(&pod)).await;
    let identity = reviewer.review(&bound).await.expect("a bound token is valid");
    assert_eq!(identity.namespace, ns);
    assert_eq!(identity.service_account, "web");
    assert_eq!(
        identity.pod_name.as_deref(),
        Some("a"),
        "pod-name claim (user extra)"
    );
    assert_eq!(identity.pod_uid.as_deref(), Some(uid.as_str()));
    assert!(identity.expires_at.is_some());

    let other_audience = token(&client, &ns, "web", "someone-else", Some(&pod)).await;
    assert!(matches!(
        reviewer.review(&other_audience).await,
        Err(ReviewError::Rejected(_))
    ));
    assert!(matches!(
        reviewer.review("eyJhbGciOiJSUzI1NiJ9.e30.forged").await,
        Err(ReviewError::Rejected(_))
    ));

    // The production decision with this real identity.
    let peer: SocketAddr = "10.1.2.3:40000".parse().expect("peer");
    let auth = Authenticator::new(
        Arc::new(KubeTokenReviewer::new(client.clone())),
        Arc::new(StaticPods(HashMap::from([(
            (ns.clone(), "a".to_string()),
            PodFacts {
                uid: uid.clone(),
                ip: Some(peer.ip()),
            },
        )]))),
        Policy {
            gateway_service_accounts: vec![format!("{ns}/gateway").parse().expect("sa")],
            check_peer: true,
        },
    );
    let header = format!("Bearer {bound}");
    let ask = |node: String| {
        let header = header.clone();
        let auth = &auth;
        async move {
            auth.admit(Credentials {
                authorization: Some(&header),
                peer: Some(peer),
                node_id: &node,
            })
            .await
        }
    };
    let own = ask(format!("a.{ns}")).await.expect("its own node");
    assert!(!own.secrets);
    assert_eq!(
        ask(format!("b.{ns}")).await.map_err(|r| r.reason),
        Err("node_mismatch")
    );
    assert_eq!(
        ask("traffic-ingress".into()).await.map_err(|r| r.reason),
        Err("not_gateway")
    );

    // Deleting the pod invalidates its bound tokens.
    pods.delete("a", &DeleteParams::default().grace_period(0))
        .await
        .expect("delete pod");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        match reviewer.review(&bound).await {
            Err(ReviewError::Rejected(_)) => break,
            other if std::time::Instant::now() > deadline => panic!("still {other:?} after the pod is gone"),
            _ => tokio::time::sleep(std::time::Duration::from_millis(500)).await,
        }
    }
}

#[tokio::test]
async fn tokens_from_token_request_are_reviewed_and_bound_to_their_pod() {
    if !enabled() {
        return;
    }
    let client = kube::Client::try_default().await.expect("kube client");
    let ns = format!("xds-auth-{}", std::process::id());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let mut n = Namespace::default();
    n.metadata.name = Some(ns.clone());
    namespaces
        .create(&PostParams::default(), &n)
        .await
        .expect("namespace");
    let outcome = tokio::spawn(run(client.clone(), ns.clone())).await;
    let _ = namespaces.delete(&ns, &DeleteParams::default()).await;
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}
