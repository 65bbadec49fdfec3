//! Where tokens come from: the TokenRequest API ([`KubeTokenSource`]) or, in tests,
//! [`FakeTokenSource`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use traffic_sidecar::PodRef;

/// The audience the control plane accepts (`traffic_xds_auth::AUDIENCE`).
pub const AUDIENCE: &str = "traffic-control";

/// A token and how long it is valid from now.
#[derive(Clone, PartialEq, Eq)]
pub struct IssuedToken {
    pub token: String,
    pub lifetime: Duration,
}

impl std::fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never log the token itself.
        f.debug_struct("IssuedToken")
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("TokenRequest for {namespace}/{service_account}: {source}")]
    Api {
        namespace: String,
        service_account: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("TokenRequest for {namespace}/{service_account} answered without a token")]
    NoToken {
        namespace: String,
        service_account: String,
    },
    #[error("token source: {0}")]
    Other(String),
}

/// Issues a token of audience [`AUDIENCE`] for `service_account` of the pod's namespace, bound
/// to the pod (by name and uid), valid for `seconds`.
pub trait TokenSource: Send + Sync {
    fn request<'a>(
        &'a self,
        pod: &'a PodRef,
        service_account: &'a str,
        seconds: i64,
    ) -> BoxFuture<'a, Result<IssuedToken, SourceError>>;
}

/// The TokenRequest API (`create` on `serviceaccounts/token`).
pub struct KubeTokenSource {
    pub client: kube::Client,
}

/// The TokenRequest body for a pod-bound token.
pub fn token_request(pod: &PodRef, seconds: i64) -> TokenRequest {
    TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![AUDIENCE.to_string()],
            expiration_seconds: Some(seconds),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(pod.name.clone()),
                uid: Some(pod.uid.clone()),
            }),
        },
        ..TokenRequest::default()
    }
}

impl TokenSource for KubeTokenSource {
    fn request<'a>(
        &'a self,
        pod: &'a PodRef,
        service_account: &'a str,
        seconds: i64,
    ) -> BoxFuture<'a, Result<IssuedToken, SourceError>> {
        Box::pin(async move {
            let api: kube::Api<ServiceAccount> = kube::Api::namespaced(self.client.clone(), &pod.namespace);
            let asked = std::time::SystemTime::now();
            let answer = api
                .create_token_request(
                    service_account,
                    &kube::api::PostParams::default(),
                    &token_request(pod, seconds),
                )
                .await
                .map_err(|e| SourceError::Api {
                    namespace: pod.namespace.clone(),
                    service_account: service_account.to_string(),
                    source: Box::new(e),
                })?;
            let status =
                answer
                    .status
                    .filter(|s| !s.token.is_empty())
                    .ok_or_else(|| SourceError::NoToken {
                        namespace: pod.namespace.clone(),
                        service_account: service_account.to_string(),
                    })?;
            // The API may shorten (or extend) the lifetime: trust its expiry, on our clock.
            let expires = std::time::SystemTime::from(status.expiration_timestamp.0);
            let lifetime = expires.duration_since(asked).unwrap_or(Duration::ZERO);
            Ok(IssuedToken {
                token: status.token,
                lifetime,
            })
        })
    }
}

/// Issues `fake-<n>-<namespace>-<pod>` tokens of the requested lifetime, or fails while
/// [`FakeTokenSource::fail`] is set.
#[derive(Debug, Default)]
pub struct FakeTokenSource {
    pub issued: AtomicU64,
    pub failing: AtomicBool,
}

impl FakeTokenSource {
    pub fn fail(&self, yes: bool) {
        self.failing.store(yes, Ordering::SeqCst);
    }
    pub fn count(&self) -> u64 {
        self.issued.load(Ordering::SeqCst)
    }
}

impl TokenSource for FakeTokenSource {
    fn request<'a>(
        &'a self,
        pod: &'a PodRef,
        _service_account: &'a str,
        seconds: i64,
    ) -> BoxFuture<'a, Result<IssuedToken, SourceError>> {
        Box::pin(async move {
            if self.failing.load(Ordering::SeqCst) {
                return Err(SourceError::Other("fake: failing".into()));
            }
            let n = self.issued.fetch_add(1, Ordering::SeqCst) + 1;
            Ok(IssuedToken {
                token: format!("fake-{n}-{}-{}", pod.namespace, pod.name),
                lifetime: Duration::from_secs(u64::try_from(seconds).unwrap_or(0)),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_is_bound_to_the_pod_for_the_control_plane_audience() {
        let pod = PodRef {
            uid: "u-1".into(),
            namespace: "shop".into(),
            name: "web-0".into(),
        };
        let r = token_request(&pod, 600);
        assert_eq!(r.spec.audiences, vec!["traffic-control".to_string()]);
        assert_eq!(r.spec.expiration_seconds, Some(600));
        let b = r.spec.bound_object_ref.unwrap_or_default();
        assert_eq!(b.kind.as_deref(), Some("Pod"));
        assert_eq!(b.name.as_deref(), Some("web-0"));
        assert_eq!(b.uid.as_deref(), Some("u-1"));
    }

    #[test]
    fn a_token_is_never_printed_by_debug() {
        let t = IssuedToken {
            token: "secret.jwt".into(),
            lifetime: Duration::from_secs(1),
        };
        assert!(!format!("{t:?}").contains("secret.jwt"));
    }
}
