//! The knobs of the translation that are not labels (chart values / CLI flags), and the names of
//! the fixed resources every node gets.

/// The ingress gateway's Envoy node id.
pub const INGRESS_NODE_ID: &str = "traffic-ingress";
pub const OUTBOUND_LISTENER: &str = "outbound";
pub const STATS_LISTENER: &str = "prometheus_stats";
pub const INGRESS_HTTP_LISTENER: &str = "ingress_http";
pub const INGRESS_HTTPS_LISTENER: &str = "ingress_https";
/// The RouteConfiguration shared by both ingress listeners.
pub const INGRESS_ROUTE: &str = "ingress";
pub const ADMIN_CLUSTER: &str = "admin";
pub const ZIPKIN_CLUSTER: &str = "zipkin";
pub const PASSTHROUGH_CLUSTER: &str = "passthrough";
/// A cluster without endpoints: the default chain under [`OutboundPolicy::Block`] proxies to it,
/// so blocked connections are closed at once and counted
/// (`envoy_cluster_upstream_cx_none_healthy{envoy_cluster_name="blackhole"}`).
pub const BLACKHOLE_CLUSTER: &str = "blackhole";
/// `stat_prefix` of the bandwidth limit filter (`http.<hcm>.bandwidth_limit.*` stats... per route).
pub(super) const RATE_LIMIT_STAT_PREFIX: &str = "rate_limit";

/// What happens to an enabled pod's outbound connection to a destination with no protocol.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OutboundPolicy {
    /// The connection is accepted and closed at once (the original project's behaviour): the
    /// default chain proxies to [`BLACKHOLE_CLUSTER`]. (A listener without any chain is not an
    /// option: Envoy rejects it when no service has a protocol yet.)
    #[default]
    Block,
    /// A default filter chain proxies it as plain TCP to its original destination.
    Passthrough,
}

/// How the ingress gateway gets TLS certificates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TlsDelivery {
    /// Inline in the listener (Envoy redacts private keys in its config dump).
    #[default]
    Inline,
    /// As SDS `Secret` resources (named `<namespace>/<name>`) over the same ADS stream.
    Sds,
}

/// A Zipkin collector, e.g. `zipkin.default.svc.cluster.local:9411` or `10.96.0.50:9411`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collector {
    pub host: String,
    pub port: u16,
}

impl std::str::FromStr for Collector {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("zipkin collector {s:?} must be host:port"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = port
            .parse::<u16>()
            .map_err(|_| format!("zipkin collector {s:?}: bad port"))?;
        if host.is_empty() {
            return Err(format!("zipkin collector {s:?}: empty host"));
        }
        Ok(Collector {
            host: host.to_string(),
            port,
        })
    }
}

/// Knobs of the translation that are not labels (chart values / CLI flags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub outbound_policy: OutboundPolicy,
    /// Where redirected outbound connections arrive (15001).
    pub outbound_port: u16,
    /// `Some(8900)`: every sidecar gets a listener on this port exposing only
    /// `/stats/prometheus` of its admin interface. `None` if the bootstrap already has it.
    pub stats_port: Option<u16>,
    /// Envoy's admin port on 127.0.0.1 (target of the stats listener).
    pub admin_port: u16,
    /// Tracing is configured only when a collector is known.
    pub zipkin: Option<Collector>,
    pub ingress_http_port: u16,
    pub ingress_https_port: u16,
    pub ingress_tls: TlsDelivery,
    /// Pod labels of the ingress gateway (`traffic-ingress`): an Istio Gateway applies to it when
    /// its `selector` is a subset of these (the chart's gateway pods carry
    /// [`default_ingress_labels`]).
    pub ingress_labels: std::collections::BTreeMap<String, String>,
    /// When true, a sidecar reaches its *own* pod (when it calls a Service it is an endpoint of)
    /// on 127.0.0.1 unless the pod has `traffic.envoy.local.use_podip=true`. Off by default:
    /// every such pod then needs its own copy of its Service's endpoint assignment (no sharing),
    /// and the pod IP always works for a Service endpoint anyway. Sidecars have no inbound
    /// listener in this design, so this is the only place `use_podip` can matter.
    pub local_endpoint_via_loopback: bool,
    /// The time TLS certificates are checked against (expired: not served; within 14 days of
    /// expiry: a warning). `None`: the current time when [`translate`] runs, which is the one
    /// input that is not the model; tests pin it.
    pub now: Option<std::time::SystemTime>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            outbound_policy: OutboundPolicy::Block,
            outbound_port: 15001,
            stats_port: Some(8900),
            admin_port: 15000,
            zipkin: None,
            ingress_http_port: 8080,
            ingress_https_port: 8443,
            ingress_tls: TlsDelivery::Inline,
            ingress_labels: default_ingress_labels(),
            local_endpoint_via_loopback: false,
            now: None,
        }
    }
}

/// The labels the chart puts on the gateway pods: `app: traffic-ingress`, and
/// `istio: ingressgateway` so Gateways written for Istio's default ingress gateway select it.
pub fn default_ingress_labels() -> std::collections::BTreeMap<String, String> {
    [("app", "traffic-ingress"), ("istio", "ingressgateway")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}
