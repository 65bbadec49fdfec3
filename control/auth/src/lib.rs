//! Authentication and authorization of xDS clients.
//!
//! Every ADS stream presents a Kubernetes ServiceAccount token (`authorization: Bearer <jwt>`,
//! audience [`AUDIENCE`]) bound to its pod. [`review`] turns a token into an [`Identity`] (a
//! [`TokenReviewer`]: the real one asks the API server with a TokenReview, [`CachingReviewer`]
//! keeps the answer until the token expires); [`policy`] decides, without I/O, whether that
//! identity may be the node it claims from the address it connects from, and whether it may
//! receive secrets; [`authenticator`] glues both into the xDS server's admission hook.

pub mod authenticator;
pub mod kube_review;
pub mod policy;
pub mod review;

pub use authenticator::{Authenticator, PodDirectory, StaticPods};
pub use kube_review::KubeTokenReviewer;
pub use policy::{Grant, PodFacts, Policy, ServiceAccountRef};
pub use review::{CachingReviewer, FakeReviewer, Identity, ReviewError, TokenReviewer};

/// The audience every xDS client's token must be issued for.
pub const AUDIENCE: &str = "traffic-control";
