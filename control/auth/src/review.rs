//! Token review: a bearer token in, the identity it proves out. [`TokenReviewer`] is the I/O
//! boundary (real: [`crate::KubeTokenReviewer`]; fake: [`FakeReviewer`]); [`CachingReviewer`]
//! remembers each accepted token until it expires (capped), so 1,000 streams reconnecting at once
//! cost one TokenReview per token, not per connection.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;

/// The user-extra key the API server sets, for a token bound to a pod, to the pod's name.
pub const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";
/// ... and to the pod's UID.
pub const POD_UID_EXTRA: &str = "authentication.kubernetes.io/pod-uid";

/// Who a token proves its bearer to be: a service account, and the pod it is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// `system:serviceaccount:<namespace>:<name>`.
    pub username: String,
    pub namespace: String,
    pub service_account: String,
    pub pod_name: Option<String>,
    pub pod_uid: Option<String>,
    /// The token's `exp` claim.
    pub expires_at: Option<SystemTime>,
}

impl Identity {
    /// The identity of a reviewed token: a service account username and the user extra.
    pub fn from_user(
        username: &str,
        extra: &BTreeMap<String, Vec<String>>,
        expires_at: Option<SystemTime>,
    ) -> Result<Self, ReviewError> {
        let rest = username
            .strip_prefix("system:serviceaccount:")
            .ok_or_else(|| ReviewError::Rejected(format!("{username} is not a service account")))?;
        let (namespace, name) = rest
            .split_once(':')
            .ok_or_else(|| ReviewError::Rejected(format!("{username} is not a service account")))?;
        let first = |key: &str| extra.get(key).and_then(|v| v.first()).cloned();
        Ok(Identity {
            username: username.to_string(),
            namespace: namespace.to_string(),
            service_account: name.to_string(),
            pod_name: first(POD_NAME_EXTRA),
            pod_uid: first(POD_UID_EXTRA),
            expires_at,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReviewError {
    /// The token is not valid (forged, expired, wrong audience, not a service account, ...).
    #[error("token rejected: {0}")]
    Rejected(String),
    /// The token could not be checked (the API server is unreachable or refused the review).
    #[error("token review failed: {0}")]
    Unavailable(String),
}

pub type ReviewFuture<'a> = Pin<Box<dyn Future<Output = Result<Identity, ReviewError>> + Send + 'a>>;

/// Checks a bearer token (without the `Bearer ` prefix).
pub trait TokenReviewer: Send + Sync + 'static {
    fn review<'a>(&'a self, token: &'a str) -> ReviewFuture<'a>;
}

/// The `exp` claim of a JWT, read without verifying it (the reviewer verifies; this only bounds
/// how long the answer is cached).
pub fn jwt_expiry(token: &str) -> Option<SystemTime> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let exp = claims.get("exp")?.as_u64()?;
    Some(UNIX_EPOCH + Duration::from_secs(exp))
}

/// A clock, so the cache is testable.
pub type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// Remembers accepted tokens until their expiry, at most `max_age` (a deleted pod's token stops
/// being accepted by the API server before it expires; `max_age` bounds how long this cache keeps
/// accepting it). Rejections are not cached.
pub struct CachingReviewer<R> {
    inner: R,
    max_age: Duration,
    clock: Clock,
    entries: Mutex<HashMap<String, (Identity, SystemTime)>>,
}

/// Entries kept before expired ones are swept.
const SWEEP_AT: usize = 4096;

impl<R: TokenReviewer> CachingReviewer<R> {
    pub fn new(inner: R, max_age: Duration) -> Self {
        Self::with_clock(inner, max_age, Arc::new(SystemTime::now))
    }

    pub fn with_clock(inner: R, max_age: Duration, clock: Clock) -> Self {
        CachingReviewer {
            inner,
            max_age,
            clock,
            entries: Mutex::default(),
        }
    }

    fn cached(&self, token: &str) -> Option<Identity> {
        let now = (self.clock)();
        let entries = self.entries.lock().ok()?;
        let (identity, until) = entries.get(token)?;
        (now < *until).then(|| identity.clone())
    }

    fn remember(&self, token: &str, identity: &Identity) {
        let now = (self.clock)();
        let mut until = now + self.max_age;
        if let Some(exp) = identity.expires_at {
            until = until.min(exp);
        }
        if until <= now {
            return;
        }
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= SWEEP_AT {
                entries.retain(|_, (_, u)| *u > now);
            }
            entries.insert(token.to_string(), (identity.clone(), until));
        }
    }
}

impl<R: TokenReviewer> TokenReviewer for CachingReviewer<R> {
    fn review<'a>(&'a self, token: &'a str) -> ReviewFuture<'a> {
        Box::pin(async move {
            if let Some(identity) = self.cached(token) {
                return Ok(identity);
            }
            let identity = self.inner.review(token).await?;
            if identity.expires_at.is_some_and(|exp| exp <= (self.clock)()) {
                return Err(ReviewError::Rejected("the token has expired".into()));
            }
            self.remember(token, &identity);
            Ok(identity)
        })
    }
}

/// A reviewer that knows a fixed set of tokens, and counts the reviews it was asked for.
#[derive(Debug, Default, Clone)]
pub struct FakeReviewer {
    tokens: Arc<Mutex<HashMap<String, Result<Identity, ReviewError>>>>,
    reviews: Arc<Mutex<usize>>,
}

impl FakeReviewer {
    /// `token` proves `identity`.
    pub fn accept(&self, token: &str, identity: Identity) {
        if let Ok(mut t) = self.tokens.lock() {
            t.insert(token.to_string(), Ok(identity));
        }
    }

    /// `token` gets `error`.
    pub fn reject(&self, token: &str, error: ReviewError) {
        if let Ok(mut t) = self.tokens.lock() {
            t.insert(token.to_string(), Err(error));
        }
    }

    pub fn reviews(&self) -> usize {
        self.reviews.lock().map(|n| *n).unwrap_or(0)
    }
}

impl TokenReviewer for FakeReviewer {
    fn review<'a>(&'a self, token: &'a str) -> ReviewFuture<'a> {
        Box::pin(async move {
            if let Ok(mut n) = self.reviews.lock() {
                *n += 1;
            }
            self.tokens
                .lock()
                .ok()
                .and_then(|t| t.get(token).cloned())
                .unwrap_or_else(|| Err(ReviewError::Rejected("unknown token".into())))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(expires_at: Option<SystemTime>) -> Identity {
        let extra = BTreeMap::from([
            (POD_NAME_EXTRA.to_string(), vec!["a".to_string()]),
            (POD_UID_EXTRA.to_string(), vec!["u".to_string()]),
        ]);
        Identity::from_user("system:serviceaccount:default:web", &extra, expires_at).expect("identity")
    }

    #[test]
    fn a_service_account_user_with_pod_claims_is_an_identity_anything_else_is_not() {
        let i = identity(None);
        assert_eq!(
            (
                i.namespace.as_str(),
                i.service_account.as_str(),
                i.pod_name.as_deref(),
                i.pod_uid.as_deref()
            ),
            ("default", "web", Some("a"), Some("u"))
        );
        assert!(Identity::from_user("kubernetes-admin", &BTreeMap::new(), None).is_err());
        assert!(Identity::from_user("system:serviceaccount:nons", &BTreeMap::new(), None).is_err());
    }

    #[test]
    fn the_expiry_is_read_from_the_jwt_payload() {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let token = format!(
            "{}.{}.sig",
            b64("{\"alg\":\"RS256\"}"),
            b64("{\"exp\":1700000000,\"aud\":[\"x\"]}")
        );
        assert_eq!(
            jwt_expiry(&token),
            Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        );
        assert_eq!(jwt_expiry("not-a-jwt"), None);
    }

    #[tokio::test]
    async fn accepted_tokens_are_cached_until_expiry_or_max_age_rejections_are_not() {
        let now = Arc::new(Mutex::new(UNIX_EPOCH + Duration::from_secs(1_000)));
        let clock: Clock = {
            let now = now.clone();
            Arc::new(move || *now.lock().expect("clock"))
        };
        let advance = |s: u64| *now.lock().expect("clock") += Duration::from_secs(s);
        let fake = FakeReviewer::default();
        fake.accept("short", identity(Some(UNIX_EPOCH + Duration::from_secs(1_030))));
        fake.accept("long", identity(Some(UNIX_EPOCH + Duration::from_secs(100_000))));
        fake.accept("expired", identity(Some(UNIX_EPOCH + Duration::from_secs(999))));
        let r = CachingReviewer::with_clock(fake.clone(), Duration::from_secs(60), clock);
        for _ in 0..3 {
            r.review("short").await.expect("short");
            r.review("long").await.expect("long");
        }
        assert_eq!(fake.reviews(), 2);
        advance(31); // past "short"'s expiry, inside max_age for "long"
        assert!(r.review("short").await.is_err(), "expired: asked again, refused");
        r.review("long").await.expect("long");
        assert_eq!(fake.reviews(), 3);
        advance(30); // past max_age
        r.review("long").await.expect("long");
        assert_eq!(fake.reviews(), 4);
        assert!(r.review("expired").await.is_err());
        assert!(r.review("unknown").await.is_err());
        assert!(r.review("unknown").await.is_err());
        assert_eq!(fake.reviews(), 7, "rejections are asked again");
    }
}
