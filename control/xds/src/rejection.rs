//! Where NACKs go besides the log and the metrics: the Kubernetes objects behind the rejected
//! resources (`traffic-kube-source` turns them into Events).

use traffic_translate::snapshot::ObjectRef;

/// Told about every configuration a proxy rejected.
///
/// Called on the stream's task: implementations must return quickly (queue the work, e.g. on a
/// channel, rather than calling the API server inline).
pub trait RejectionSink: Send + Sync + 'static {
    /// Proxy `node` rejected a push of `type_url`. `origins` are the labelled objects of the
    /// resources that push introduced (deduplicated, possibly empty); `message` is the proxy's
    /// `error_detail.message`.
    fn rejected(&self, node: &str, type_url: &str, origins: &[ObjectRef], message: &str);
}

/// A sink that does nothing beyond the server's own log line and metric.
#[derive(Debug, Clone, Copy, Default)]
pub struct IgnoreRejections;

impl RejectionSink for IgnoreRejections {
    fn rejected(&self, _node: &str, _type_url: &str, _origins: &[ObjectRef], _message: &str) {}
}

/// One rejection, as the pure stream state machines report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub type_url: String,
    /// Names of the resources the rejected push introduced (they will not be sent again at the
    /// same version).
    pub resources: Vec<String>,
    pub origins: Vec<ObjectRef>,
    pub message: String,
    /// The version the proxy says it is still on.
    pub kept_version: String,
}
