//! Where NACKs go besides the log and the metrics: the Kubernetes objects behind the rejected
//! resources (`traffic-kube-source` turns them into Events).

use std::sync::Arc;

use traffic_translate::snapshot::Resource;

use crate::quarantine::Verdict;

/// Told about every resource a proxy rejected, once the stream has found which one it was.
///
/// Called on the stream's task: implementations must return quickly (queue the work, e.g. on a
/// channel, rather than calling the API server inline).
pub trait RejectionSink: Send + Sync + 'static {
    /// Proxy `node` rejected `resources` of `type_url` (at least one; each with its name and the
    /// labelled object it came from, if any); they are kept out of that proxy's configuration
    /// until they change. `message` is the proxy's `error_detail.message`.
    fn rejected(&self, node: &str, type_url: &str, resources: &[Arc<Resource>], message: &str);
}

/// A sink that does nothing beyond the server's own log line and metric.
#[derive(Debug, Clone, Copy, Default)]
pub struct IgnoreRejections;

impl RejectionSink for IgnoreRejections {
    fn rejected(&self, _node: &str, _type_url: &str, _resources: &[Arc<Resource>], _message: &str) {}
}

/// One NACK, as the pure stream state machines report it.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub type_url: String,
    /// The nonce the NACK answered.
    pub nonce: String,
    /// It answered an older response than the last one sent (newer config was on its way).
    pub stale: bool,
    /// What it told about the resources of that response.
    pub verdict: Verdict,
    pub message: String,
    /// The version the proxy says it is still on (SotW; empty in delta).
    pub kept_version: String,
}

impl Rejection {
    /// Names of the resources the verdict is about.
    pub fn resource_names(&self) -> Vec<&str> {
        self.verdict.resources().iter().map(|r| r.name.as_str()).collect()
    }
}
