//! The xDS server's Prometheus metrics, registered under the `xds` prefix of the caller's registry.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::type_name;

/// Which flavour of ADS a stream speaks.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Mode {
    Sotw,
    Delta,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Sotw => "sotw",
            Mode::Delta => "delta",
        }
    }
}

impl EncodeLabelValue for Mode {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModeLabels {
    pub mode: Mode,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabels {
    pub mode: Mode,
    /// Short resource type: `listener`, `route`, `cluster`, `endpoint`, `secret`, or the type URL.
    pub r#type: String,
}

impl TypeLabels {
    pub fn new(mode: Mode, type_url: &str) -> Self {
        TypeLabels {
            mode,
            r#type: type_name(type_url).to_string(),
        }
    }
}

/// Why a stream was refused (`no_token`, `invalid_token`, `node_mismatch`, ...).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

/// Every metric the server updates. Cheap to clone (the metrics are shared handles).
#[derive(Debug, Clone)]
pub struct XdsMetrics {
    /// ADS streams currently open.
    pub connected_proxies: Family<ModeLabels, Gauge>,
    /// Responses sent.
    pub pushes: Family<TypeLabels, Counter>,
    /// Resources carried by those responses (updated + removed).
    pub pushed_resources: Family<TypeLabels, Counter>,
    /// Responses the proxy accepted.
    pub acks: Family<TypeLabels, Counter>,
    /// Responses the proxy rejected (every NACK, whatever nonce it carries: compare with Envoy's
    /// own `update_rejected` counters).
    pub nacks: Family<TypeLabels, Counter>,
    /// NACKs answering an older response than the last one sent.
    pub stale_nacks: Family<TypeLabels, Counter>,
    /// Resources found rejected and kept out of a proxy's configuration (one per resource and
    /// stream; the names are in the log and the Event).
    pub rejected_resources: Family<TypeLabels, Counter>,
    /// Resources currently kept out of some proxy's configuration, summed over streams.
    pub quarantined_resources: Family<TypeLabels, Gauge>,
    /// Requests ignored because their nonce was not the last one sent (or unknown).
    pub stale_requests: Family<TypeLabels, Counter>,
    /// Streams that ended with an error (transport failure, malformed request).
    pub stream_errors: Family<ModeLabels, Counter>,
    /// Streams admitted by the admission hook (authentication on).
    pub auth_admissions: Counter,
    /// Streams refused by the admission hook, by reason.
    pub auth_refusals: Family<ReasonLabels, Counter>,
    /// Admitted streams ended because their token expired (the client reconnects with a new one).
    pub auth_expired: Counter,
    /// From a new snapshot being published to its responses being queued on a stream.
    pub push_latency: Histogram,
    /// From a response being queued to the proxy acknowledging it.
    pub ack_latency: Histogram,
}

impl Default for XdsMetrics {
    fn default() -> Self {
        XdsMetrics {
            connected_proxies: Family::default(),
            pushes: Family::default(),
            pushed_resources: Family::default(),
            acks: Family::default(),
            nacks: Family::default(),
            stale_nacks: Family::default(),
            rejected_resources: Family::default(),
            quarantined_resources: Family::default(),
            stale_requests: Family::default(),
            stream_errors: Family::default(),
            auth_admissions: Counter::default(),
            auth_refusals: Family::default(),
            auth_expired: Counter::default(),
            // 100 µs .. ~6.5 s
            push_latency: Histogram::new(exponential_buckets(0.0001, 2.0, 17)),
            ack_latency: Histogram::new(exponential_buckets(0.0001, 2.0, 17)),
        }
    }
}

impl XdsMetrics {
    /// Creates the metrics and registers them under `xds_` in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = XdsMetrics::default();
        let r = registry.sub_registry_with_prefix("xds");
        r.register(
            "connected_proxies",
            "ADS streams currently open",
            m.connected_proxies.clone(),
        );
        r.register("pushes", "xDS responses sent to proxies", m.pushes.clone());
        r.register(
            "pushed_resources",
            "Resources (updated or removed) carried by xDS responses",
            m.pushed_resources.clone(),
        );
        r.register("acks", "xDS responses accepted by proxies", m.acks.clone());
        r.register("nacks", "xDS responses rejected by proxies", m.nacks.clone());
        r.register(
            "stale_nacks",
            "NACKs answering an older response than the last one sent",
            m.stale_nacks.clone(),
        );
        r.register(
            "rejected_resources",
            "Resources found rejected by a proxy and kept out of its configuration",
            m.rejected_resources.clone(),
        );
        r.register(
            "quarantined_resources",
            "Resources currently kept out of a proxy's configuration because it rejected them (summed over streams)",
            m.quarantined_resources.clone(),
        );
        r.register(
            "stale_requests",
            "xDS requests ignored because their nonce is not the last one sent",
            m.stale_requests.clone(),
        );
        r.register(
            "stream_errors",
            "ADS streams that ended with an error",
            m.stream_errors.clone(),
        );
        r.register(
            "auth_admissions",
            "ADS streams admitted after authentication",
            m.auth_admissions.clone(),
        );
        r.register(
            "auth_refusals",
            "ADS streams refused (no or invalid token, node or peer not the token's), by reason",
            m.auth_refusals.clone(),
        );
        r.register(
            "auth_expired_streams",
            "Admitted ADS streams ended with UNAUTHENTICATED when their token expired",
            m.auth_expired.clone(),
        );
        r.register(
            "push_latency_seconds",
            "Time from a snapshot being published to its responses being queued on a stream",
            m.push_latency.clone(),
        );
        r.register(
            "ack_latency_seconds",
            "Time from a response being queued to the proxy acknowledging it",
            m.ack_latency.clone(),
        );
        m
    }
}
