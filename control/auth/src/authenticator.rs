//! The xDS server's admission hook: the bearer token reviewed, then [`crate::policy::authorize`]
//! with what the control plane knows of the token's pod.

use std::sync::Arc;

use traffic_xds::{Admission, Admit, AdmitFuture, Credentials, Refusal};

pub use crate::policy::PodFacts;
use crate::policy::{authorize, Policy};
use crate::review::{ReviewError, TokenReviewer};

/// What the control plane knows of pods (from its watch of the cluster).
pub trait PodDirectory: Send + Sync + 'static {
    fn pod(&self, namespace: &str, name: &str) -> Option<PodFacts>;
}

/// Implements [`Admit`] with a token reviewer, a pod directory and a policy.
pub struct Authenticator {
    reviewer: Arc<dyn TokenReviewer>,
    pods: Arc<dyn PodDirectory>,
    policy: Policy,
}

impl Authenticator {
    pub fn new(reviewer: Arc<dyn TokenReviewer>, pods: Arc<dyn PodDirectory>, policy: Policy) -> Self {
        Authenticator {
            reviewer,
            pods,
            policy,
        }
    }

    async fn decide(&self, c: Credentials<'_>) -> Result<Admission, Refusal> {
        let Some(header) = c.authorization else {
            return Err(Refusal::unauthenticated("no_token", "no authorization metadata"));
        };
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Refusal::unauthenticated("no_token", "authorization is not a bearer token"))?;
        let identity = self.reviewer.review(token).await.map_err(|e| match e {
            ReviewError::Rejected(m) => Refusal::unauthenticated("invalid_token", m),
            ReviewError::Unavailable(m) => Refusal::unavailable("review_failed", m),
        })?;
        let pod = identity
            .pod_name
            .as_deref()
            .and_then(|name| self.pods.pod(&identity.namespace, name));
        let grant = authorize(
            &self.policy,
            &identity,
            c.node_id,
            c.peer.map(|p| p.ip()),
            pod.as_ref(),
        )?;
        Ok(Admission {
            secrets: grant.secrets,
            identity: match &identity.pod_name {
                Some(pod) => format!("{} (pod {pod})", identity.username),
                None => identity.username.clone(),
            },
            expires_at: identity.expires_at,
        })
    }
}

impl Admit for Authenticator {
    fn admit<'a>(&'a self, credentials: Credentials<'a>) -> AdmitFuture<'a> {
        Box::pin(self.decide(credentials))
    }
}

/// A fixed set of pods, for tests and the model-file mode.
#[derive(Debug, Default, Clone)]
pub struct StaticPods(pub std::collections::HashMap<(String, String), PodFacts>);

impl PodDirectory for StaticPods {
    fn pod(&self, namespace: &str, name: &str) -> Option<PodFacts> {
        self.0.get(&(namespace.to_string(), name.to_string())).cloned()
    }
}
